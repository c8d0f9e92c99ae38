"""Continued pre-training on raw text: every token supervised, loss falls, long documents split."""

import json

import tiny
from tuneforge.stages import STAGES

DOCS = ["the sky is blue and the grass is green .", "the capital of france is paris .",
        "one two three four five six seven eight nine ten .", "the sun is yellow and the snow is white ."]


def test_pretrain_learns_the_corpus(make_config, tmp_path):
    train = tiny.write_jsonl(tmp_path / "t.jsonl", [{"text": d} for d in DOCS * 8])
    evals = tiny.write_jsonl(tmp_path / "e.jsonl", [{"text": d} for d in DOCS])
    cfg = make_config(stage="pretrain", data__train=str(train), data__eval=str(evals), training__max_length=16,
                      eval__generate_samples=2)  # overlength: split by default for pretrain
    assert cfg.training.overlength == "split"
    out = STAGES["pretrain"](cfg)
    m = json.loads((out / "metrics.json").read_text())
    assert m["eval_after"]["loss"] < 0.5 * m["eval_before"]["loss"]
    assert "exact_match" not in m["eval_after"]  # no task metric for raw text
    assert m["data"]["train"]["split_chunks"] > 0  # 20+ token documents became 16-token chunks
    assert m["data"]["train"]["supervised_tokens"] == m["data"]["train"]["tokens"]
    assert m["data"]["train"]["tokens"] == m["data"]["train"]["corpus_tokens"]  # every token of the corpus used
    assert len(json.loads((out / "generations.jsonl").read_text().splitlines()[0])["tuned"]) > 0
