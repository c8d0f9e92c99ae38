"""Several eval sources (data.eval as a list, sft / pretrain) are read from a token cache each, like one eval
file: a cache entry per source, reused by the next run, examples equal to the in-memory build (cut to
eval.max_samples), the eval records kept for the generation items, and each source's loss in metrics.json."""

from __future__ import annotations

import json
import math

import tiny
from tuneforge.data.load import load_records
from tuneforge.data.stage_data import load_stage_data, load_stage_examples
from tuneforge.data.templates import apply_template
from tuneforge.data.token_cache import CachedExamples, data_cache_dir, file_sha256
from tuneforge.models import load_tokenizer
from tuneforge.stages import STAGES


def test_each_eval_source_comes_from_its_cache_and_reports_its_loss(make_config, tmp_path):
    marker = [{"prompt": "which file is this ?", "completion": f"{tmp_path.name} ."}]  # content no other test has
    a = tiny.write_jsonl(tmp_path / "a.jsonl", tiny.toy_sft_rows(11)[6:] + marker)
    b = tiny.write_jsonl(tmp_path / "b.jsonl", tiny.toy_sft_rows(4) + marker)
    cfg = make_config(data__eval=[str(a), str(b)], eval__max_samples=4, eval__generate_samples=2,
                      training__max_steps=2, eval__before=False)
    logs = []
    out = STAGES["sft"].run(cfg, log=logs.append)
    for path in (a, b):  # built once each, in an entry keyed by the file's content
        assert any(line.startswith("data cache: tokenizing") and f" {path} into " in line for line in logs), logs
    entries = {json.loads((d / "meta.json").read_text())["parts"]["data_sha256"]: d
               for d in data_cache_dir().iterdir() if (d / "meta.json").is_file()}
    assert file_sha256(a) in entries and file_sha256(b) in entries

    metrics = json.loads((out / "metrics.json").read_text())
    after = metrics["eval_after"]
    assert math.isfinite(after["loss/a.jsonl"]) and math.isfinite(after["loss/b.jsonl"])
    assert after["loss/a.jsonl"] != after["loss/b.jsonl"]
    sources = metrics["data"]["eval"]["sources"]
    assert sources["a.jsonl"]["records"] == 4 and sources["b.jsonl"]["records"] == 4  # eval.max_samples

    logs.clear()  # the next run reuses both entries; the examples are the cache's, equal to the in-memory ones
    tok = load_tokenizer(cfg.model)
    data = load_stage_data(cfg, tok, logs.append)
    assert not any(line.startswith("data cache: tokenizing") for line in logs), logs
    for name, path in (("a.jsonl", a), ("b.jsonl", b)):
        assert any(f"reused {entries[file_sha256(path)]} for {path}" in line for line in logs), logs
        cached = data.eval_sources[name]
        assert isinstance(cached, CachedExamples) and cached.reader.dir == entries[file_sha256(path)]
        apply_template(tok, cfg.data.template)
        expected, _ = load_stage_examples(cfg, tok, load_records(path)[:4])
        assert list(cached) == expected
    assert len(data.eval) == 8 and list(data.eval) == list(data.eval_sources["a.jsonl"]) + list(
        data.eval_sources["b.jsonl"])
    assert [r.where for r in data.eval_records] == [f"{p}:{i}" for p, n in ((a, 6), (b, 5)) for i in range(1, n + 1)]
