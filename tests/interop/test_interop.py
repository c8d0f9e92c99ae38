"""Interoperability: a run is usable without tuneforge. Its adapter loads in plain peft, its merged model in
plain transformers, and lm-evaluation-harness scores it through its `hf` model with `peft=` on the local
task in examples/lm_eval, with the same log-likelihoods and accuracy that tuneforge computes itself."""

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

import tiny
from tuneforge.config.schema import Config
from tuneforge.export.merge import _logits, merge
from tuneforge.models import resolve_model
from tuneforge.runs import load_run
from tuneforge.stages import STAGES

ROOT = Path(__file__).resolve().parents[2]
TASK_DIR = ROOT / "examples" / "lm_eval"
PROBES = ["<|im_start|>user\nwhat color is the sky ?<|im_end|>\n<|im_start|>assistant\n", "the capital of spain is"]


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("interop")
    cfg = Config.model_validate({
        "model": str(tiny_model_dir), "stage": "sft",
        "method": {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
        "data": {"train": str(tiny.write_jsonl(root / "train.jsonl", tiny.toy_sft_rows(42)))},
        "training": {"max_steps": 30, "learning_rate": 3e-2, "batch_size": 4, "warmup_ratio": 0.0,
                     "lr_scheduler": "constant", "max_length": 128, "progress": False, "precision": "fp32"},
        "eval": {"before": False, "generate_samples": 0}, "output_dir": str(root / "run"), "seed": 0,
    })
    return STAGES["sft"](cfg)


def test_adapter_loads_in_plain_peft(run, tiny_model_dir):
    model, tok, cfg = load_run(run)
    base = AutoModelForCausalLM.from_pretrained(resolve_model(cfg.model), dtype=torch.float32)
    plain = PeftModel.from_pretrained(base, str(run)).eval()
    want, got = _logits(model, tok, PROBES), _logits(plain, tok, PROBES)
    assert torch.equal(want, got)
    with plain.disable_adapter():  # the adapter is not a no-op: without it the logits move
        assert (_logits(plain, tok, PROBES) - want).abs().max() > 1e-2


def test_merged_model_loads_in_plain_transformers(run, tmp_path):
    out = merge(run, tmp_path / "merged")
    model, tok, _ = load_run(run)
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert (_logits(model, tok, PROBES) - _logits(plain, tok, PROBES)).abs().max() <= 1e-4
    assert not any("lora" in name for name in plain.state_dict())


@torch.no_grad()
def _loglikelihood(model, tok, context: str, continuation: str) -> float:
    """log P(continuation | context), summed over the continuation's tokens."""
    ctx = tok(context)["input_ids"]
    whole = tok(context + continuation)["input_ids"]
    assert whole[: len(ctx)] == ctx  # the split lands on a token boundary
    logprobs = model(torch.tensor([whole]), use_cache=False).logits[0].float().log_softmax(-1)
    return float(sum(logprobs[i - 1, whole[i]] for i in range(len(ctx), len(whole))))


def test_lm_eval_harness_scores_the_run_like_tuneforge(run, tiny_model_dir, tmp_path, monkeypatch):
    import lm_eval
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    result = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": str(tiny_model_dir), "peft": str(run), "tokenizer": str(run),
                                "dtype": "float32", "device": "cpu"},
        tasks=["tuneforge_toy_qa"], task_manager=TaskManager(include_path=str(TASK_DIR)), batch_size=4,
        log_samples=True)
    samples = sorted(result["samples"]["tuneforge_toy_qa"], key=lambda s: s["doc_id"])
    docs = [json.loads(line) for line in (TASK_DIR / "toy_qa.jsonl").read_text().splitlines()]
    assert len(samples) == len(docs) == 10

    model, tok, _ = load_run(run)
    correct = 0
    for doc, sample in zip(docs, samples, strict=True):
        ours = [_loglikelihood(model, tok, doc["question"], " " + choice) for choice in doc["choices"]]
        theirs = [resp[0][0] for resp in sample["resps"]]
        assert ours == pytest.approx(theirs, abs=1e-4)
        correct += max(range(len(ours)), key=ours.__getitem__) == doc["answer"]
    assert result["results"]["tuneforge_toy_qa"]["acc,none"] == pytest.approx(correct / len(docs))
    assert 0.5 <= correct / len(docs)  # the run learned these facts; the number is not a degenerate 0
