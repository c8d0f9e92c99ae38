"""The studio on the embedded default (`real`: needs the smollm2-135m-instruct wheel), through the API its page
uses: an sft run of smollm2-135m-instruct started from the form's fields (POST /api/runs), trained by a real
`tuneforge train` process for a few steps, its live points, eval points and metrics read back (GET /api/runs/NAME);
and a GGUF export from a run's page (POST /api/runs/NAME/export) verified by `tuneforge export`, on a tiny model
with SmolLM2's tokenizer (the converter knows that tokenizer, not the word-level one of the other tests)."""

from __future__ import annotations

import json
import math
import time

import pytest

import tiny

fastapi_testclient = pytest.importorskip("fastapi.testclient")
pytestmark = pytest.mark.real


def _client(tmp_path):
    from tuneforge.studio.app import LOOPBACK_NAMES, create_app

    app = create_app(tmp_path / "runs", [tmp_path], hosts=(*LOOPBACK_NAMES, "testserver"), cwd=tmp_path)
    return fastapi_testclient.TestClient(app)


def _until(check, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_the_embedded_default_trains_from_the_form_and_its_metrics_come_back(tmp_path):
    form = {"name": "embedded", "model": "smollm2-135m-instruct", "stage": "sft", "method.name": "lora",
            "data.train": str(tiny.write_jsonl(tmp_path / "train.jsonl", tiny.toy_sft_rows(16))),
            "data.eval": str(tiny.write_jsonl(tmp_path / "eval.jsonl", tiny.toy_sft_rows(4, seed=1))),
            "training.max_steps": "3", "training.batch_size": "2", "training.max_length": "64",
            "training.eval_steps": "2", "eval.generate_samples": "0"}
    with _client(tmp_path) as client:
        checked = client.post("/api/validate", json=form).json()
        assert checked["ok"], checked["errors"]
        started = client.post("/api/runs", json=form)
        assert started.status_code == 200, started.text
        _until(lambda: client.get("/api/runs/embedded").json()["status"] not in ("queued", "running"), 600,
               "the run to end")
        run = client.get("/api/runs/embedded").json()
    assert run["status"] == "finished", run["log"]
    assert (run["stage"], run["method"], run["model"]) == ("sft", "lora", "smollm2-135m-instruct")
    assert run["step"] == run["total_steps"] == 3 and [p["step"] for p in run["points"]] == [1, 2, 3]
    metrics = run["metrics"]
    assert math.isfinite(metrics["eval_before"]["loss"]) and math.isfinite(metrics["eval_after"]["loss"])
    assert metrics["train"]["tokens_per_second"] > 0 and metrics["train"]["trainable_params"] > 0
    assert [(e["step"], e["loss"]) for e in run["evals"]] == [(e["step"], e["loss"]) for e in metrics["evals"]]
    assert [e["step"] for e in run["evals"]] == [2]


def test_a_gguf_export_from_the_run_page_shows_its_verification(tmp_path):
    from transformers import AutoTokenizer

    from tuneforge.config.schema import Config
    from tuneforge.models import resolve_model
    from tuneforge.stages import STAGES

    model_dir = tmp_path / "tiny-bpe"
    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    tok.save_pretrained(model_dir)
    tiny.build_model(model_dir, len(tok))
    STAGES["sft"](Config.model_validate({
        "model": str(model_dir), "stage": "sft", "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train": str(tiny.write_jsonl(tmp_path / "t.jsonl", tiny.toy_sft_rows(8))),
                 "eval": str(tiny.write_jsonl(tmp_path / "e.jsonl", tiny.toy_sft_rows(2, seed=1)))},
        "training": {"max_steps": 2, "batch_size": 4, "max_length": 64, "progress": False, "precision": "fp32"},
        "eval": {"before": False, "generate_samples": 2, "max_new_tokens": 4},
        "output_dir": str(tmp_path / "runs" / "gg"), "seed": 0}))
    with _client(tmp_path) as client:
        assert client.get("/api/runs/gg/export").json()["status"] == "none"
        started = client.post("/api/runs/gg/export", json={"quant": "q8_0"})
        assert started.status_code == 200, started.text
        state = _until(lambda: (s := client.get("/api/runs/gg/export").json())["status"] in ("done", "failed") and s,
                       300, "the export")
    written = tmp_path / "runs" / "gg" / "model-q8_0.gguf"
    assert state["status"] == "done", state["log"]
    assert state["report"] == json.loads(written.with_name(written.name + ".json").read_text())
    assert state["report"]["bytes"] == written.stat().st_size and state["report"]["chat_template_embedded"]
    check = state["report"]["transformers_gguf"]
    assert check["mean_kl"] <= check["kl_tolerance"] and check["positions"] > 0
    assert state["command"] == f"tuneforge export {tmp_path / 'runs' / 'gg'} --format gguf --quant q8_0"
