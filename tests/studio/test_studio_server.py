"""tuneforge studio without a browser (FastAPI TestClient): the form comes from the schema and the stage / method
tables, is checked by `tuneforge validate`'s code with errors at their fields, data problems carry line numbers,
paths outside the allowed roots and foreign requests are refused, and runs started from the command line are found.
The browser flow (real processes, stop / resume, a killed studio) is test_studio_browser.py."""

from __future__ import annotations

import json
import shutil

import pytest

import tiny
from tuneforge.config.schema import METHOD_CONFIGS
from tuneforge.methods import METHODS
from tuneforge.stage_info import STAGE_INFO

fastapi_testclient = pytest.importorskip("fastapi.testclient")


@pytest.fixture
def studio(tmp_path, tiny_model_dir):
    from tuneforge.studio.app import LOOPBACK_NAMES, create_app

    def make(**kwargs):  # TestClient's requests say Host: testserver
        app = create_app(tmp_path / "runs", [tmp_path, tiny_model_dir], hosts=(*LOOPBACK_NAMES, "testserver"), **kwargs)
        return fastapi_testclient.TestClient(app)

    return make


def _form(tmp_path, tiny_model_dir, **extra) -> dict:
    train = tiny.write_jsonl(tmp_path / "train.jsonl", tiny.toy_sft_rows(12))
    return {"name": "r1", "model": str(tiny_model_dir), "stage": "sft", "method.name": "lora",
            "data.train": str(train), "training.max_steps": "3", **extra}


def test_the_form_is_the_schema_and_the_tables(studio):
    with studio() as client:
        schema = client.get("/api/schema").json()
    assert set(schema["stages"]) == set(STAGE_INFO)
    assert set(schema["methods"]) == set(METHOD_CONFIGS)
    for name, method in schema["methods"].items():
        assert method["stages"] == sorted(METHODS[name].stages)
        assert [f["key"] for f in method["fields"]] == [f"method.{k}" for k in METHOD_CONFIGS[name].model_fields
                                                        if k != "name"]
    fields = {f["key"]: f for s in schema["sections"] for f in s["fields"]}
    assert fields["training.batch_size"] == {**fields["training.batch_size"], "kind": "int", "default": 8,
                                             "bounds": {"ge": 1}}
    assert fields["training.lr_scheduler"]["choices"] == ["linear", "cosine", "constant"]
    assert "non-finite" in fields["training.max_bad_steps"]["help"]
    assert {s["name"]: s["stage"] for s in schema["sections"]}["grpo"] == "grpo"


def test_validate_shows_the_exact_yaml_and_errors_at_their_fields(studio, tmp_path, tiny_model_dir):
    with studio() as client:
        good = client.post("/api/validate", json=_form(tmp_path, tiny_model_dir, **{"method.r": "4"})).json()
        bad = client.post("/api/validate", json=_form(tmp_path, tiny_model_dir, **{
            "training.batch_size": "0", "training.learning_rate": "fast", "method.r": "x"})).json()
        pair = client.post("/api/validate", json=_form(tmp_path, tiny_model_dir, stage="classify",
                                                       **{"method.name": "prefix"})).json()
        name = client.post("/api/validate", json=_form(tmp_path, tiny_model_dir, name="../up")).json()
    assert good["ok"] and good["errors"] == {}
    import yaml

    raw = yaml.safe_load(good["yaml"])
    assert raw["method"] == {"name": "lora", "r": 4} and raw["training"] == {"max_steps": 3}
    assert raw["output_dir"] == str(tmp_path / "runs" / "r1")
    assert good["command"] == f"tuneforge train {tmp_path / 'runs' / '.studio' / 'r1' / 'config.yaml'}"
    assert not bad["ok"] and set(bad["errors"]) == {"training.batch_size", "training.learning_rate", "method.r"}
    assert "greater than or equal to 1" in bad["errors"]["training.batch_size"]
    assert "Traceback" not in json.dumps(bad)
    assert set(pair["errors"]) == {"method.name"}
    assert "does not support stage 'classify'" in pair["errors"]["method.name"]
    assert set(name["errors"]) == {"name"}


def test_data_preview_names_the_bad_lines(studio, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "hi", "output": "hello"}\n{broken\n{"instruction": "", "output": "x"}\n')
    with studio() as client:
        view = client.post("/api/data", json={"path": str(bad), "stage": "sft"}).json()
    assert view["records"] == 3 and view["valid"] == 1 and view["format"] == "alpaca" and not view["ok"]
    lines = {f["kind"]: [e["line"] for e in f["examples"]] for f in view["findings"]}
    assert lines == {"malformed_json": [2], "empty_field": [3]}
    assert [r["line"] for r in view["rows"]] == [1, 2, 3] and "problem" in view["rows"][1]


def test_a_launch_with_unusable_records_is_refused_at_the_data_field(studio, tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "hi", "output": "hello"}\n{broken\n')
    with studio() as client:
        r = client.post("/api/runs", json=_form(tmp_path, tiny_model_dir, **{"data.train": str(bad)}))
        assert r.status_code == 422 and set(r.json()["errors"]) == {"data.train"}
        assert f"{bad}:2" in r.json()["errors"]["data.train"]
        assert client.get("/api/runs").json()["runs"] == []  # nothing queued, no process


def test_paths_outside_the_allowed_roots_are_refused(studio, tmp_path, tiny_model_dir):
    outside = tmp_path.parent / f"{tmp_path.name}-outside.jsonl"
    shutil.copy(tiny.write_jsonl(tmp_path / "t.jsonl", tiny.toy_sft_rows(4)), outside)
    try:
        with studio() as client:
            form = client.post("/api/validate", json=_form(tmp_path, tiny_model_dir, **{"data.train": str(outside)}))
            data = client.post("/api/data", json={"path": str(outside), "stage": "sft"})
            dots = client.post("/api/data", json={"path": str(tmp_path / ".." / outside.name), "stage": "sft"})
    finally:
        outside.unlink()
    assert "outside the studio's allowed folders" in form.json()["errors"]["data.train"]
    assert data.status_code == 400 and "outside" in data.json()["error"]
    assert dots.status_code == 400


def test_key_host_and_origin_are_checked(studio):
    with studio(api_key="s3cret") as client:
        assert client.get("/api/schema").status_code == 401
        assert client.get("/api/schema", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/?key=wrong", follow_redirects=False).status_code == 401
        r = client.get("/?key=s3cret", follow_redirects=False)
        assert r.status_code == 303 and "httponly" in r.headers["set-cookie"].lower()
        assert client.get("/api/schema").status_code == 200  # the cookie now
    with studio() as client:
        assert client.get("/", headers={"Host": "evil.example:7860"}).status_code == 421  # DNS rebinding
        assert client.post("/api/validate", content="{}", headers={"Content-Type": "text/plain"}).status_code == 415
        r = client.post("/api/validate", json={}, headers={"Origin": "http://evil.example"})
        assert r.status_code == 403
        assert client.get("/static/../app.py").status_code == 404
        assert "tuneforge studio" in client.get("/").text and client.get("/static/app.js").status_code == 200


def test_a_non_loopback_bind_needs_a_key(run_cli, capsys, monkeypatch):
    monkeypatch.delenv("TUNEFORGE_API_KEY", raising=False)
    assert run_cli(["studio", "--host", "0.0.0.0"]) == 2
    assert "needs an API key" in capsys.readouterr().err


def test_runs_started_from_the_command_line_are_found(studio, tmp_path, sft_run):
    shutil.copytree(sft_run, tmp_path / "runs" / "cli-run")
    with studio() as client:
        runs = client.get("/api/runs").json()["runs"]
        detail = client.get("/api/runs/cli-run").json()
        assert client.post("/api/runs/cli-run/stop", json={}).status_code == 400
        assert client.post("/api/runs/cli-run/resume", json={}).status_code == 400  # finished
    assert [(r["name"], r["status"], r["stage"], r["method"], r["studio"]) for r in runs] == [
        ("cli-run", "finished", "sft", "lora", False)]
    assert detail["step"] == detail["total_steps"] == 20 and len(detail["points"]) == 20
    assert detail["metrics"]["eval_after"]["loss"] < detail["metrics"]["eval_before"]["loss"]
    assert [g["tuned"] for g in detail["generations"]] == [
        json.loads(x)["tuned"] for x in (sft_run / "generations.jsonl").read_text().splitlines()]
    assert detail["report"] == (sft_run / "report.md").read_text()


def test_the_log_reader_keeps_the_last_record_of_each_step(tmp_path):
    from tuneforge.studio.manager import progress, read_log

    log = tmp_path / "train_log.jsonl"
    rows = [{"step": 1, "loss": 3.0, "tokens": 100, "seconds": 0.5}, {"step": 2, "loss": 2.9, "tokens": 100,
                                                                        "seconds": 0.5}]
    # a killed attempt logged step 2, the resumed one logged it again; the kill cut a line short
    log.write_text("".join(json.dumps(r) + "\n" for r in rows) + json.dumps({**rows[1], "loss": 2.5}) + "\n{\"st")
    points = read_log(log)
    assert [(p["step"], p["loss"]) for p in points] == [(1, 3.0), (2, 2.5)]
    assert progress(points, 10) == {"step": 2, "total_steps": 10, "loss": 2.5, "tokens_per_second": 200.0,
                                    "eta_seconds": 4.0}


def test_the_live_log_of_a_resumed_run_drops_steps_after_its_checkpoint(tmp_path):
    from tuneforge.train.metric_log import MetricLog, _start_live_log

    log = tmp_path / "train_log.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo')
    writer = MetricLog([], _start_live_log(log, purge_step=4))  # resumed from the checkpoint at step 3
    history: list[dict] = []
    writer.add_step(history, step=4, loss=0.5)
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2, 3, 4] and len(history) == 1
    MetricLog([], _start_live_log(log, purge_step=None))  # a new run starts it empty
    assert log.read_text() == ""


def test_chat_answers_as_the_run_and_its_base_did_in_its_own_evaluation(studio, tmp_path, sft_run):
    """Both sides get the run's template and system prompt: greedy replies equal generations.jsonl's base and
    tuned answers, which the run's own evaluation generated."""
    shutil.copytree(sft_run, tmp_path / "runs" / "done")
    rows = [json.loads(x) for x in (sft_run / "generations.jsonl").read_text().splitlines()][:2]
    with studio() as client:
        for row in rows:
            messages = [{"role": "user", "content": row["question"]}]
            r = client.post("/api/runs/done/chat", json={"base": messages, "tuned": messages, "max_new_tokens": 12})
            assert r.status_code == 200, r.text
            assert (r.json()["base"]["text"], r.json()["tuned"]["text"]) == (row["base"], row["tuned"])
        messages = [{"role": "user", "content": rows[0]["question"]}]
        streamed = client.post("/api/runs/done/chat/stream", json={"base": messages, "tuned": messages,
                                                                  "max_new_tokens": 12})
        events = [json.loads(line) for line in streamed.text.splitlines()]
        for side in ("base", "tuned"):  # pieces as decoded, then the whole reply
            pieces = "".join(e["text"] for e in events if e.get("side") == side and "text" in e)
            (done,) = [e["done"] for e in events if e.get("side") == side and "done" in e]
            assert pieces == done["text"] == rows[0][side]
        for path in ("chat", "chat/stream"):  # refused before anything generates
            bad = client.post(f"/api/runs/done/{path}", json={"tuned": [{"role": "robot", "content": "hi"}]})
            assert bad.status_code == 400 and "role" in bad.json()["error"]


def test_memory_per_method_is_plans_estimate_for_the_stage(studio, tiny_model_dir):
    from tuneforge.plan import estimate, load_arch_config

    form = {"model": str(tiny_model_dir), "stage": "classify", "training.batch_size": "2", "training.max_length": "64",
            "training.precision": "fp32"}
    with studio() as client:
        plan = client.post("/api/plan", json=form).json()
        outside = client.post("/api/plan", json={**form, "model": "/etc"})
    assert [r["method"] for r in plan["rows"]] == [m for m, x in METHODS.items() if "classify" in x.stages]
    lora = next(r for r in plan["rows"] if r["method"] == "lora")
    want = estimate(load_arch_config(str(tiny_model_dir)), "lora", batch_size=2, seq_len=64, precision="fp32",
                    classifier=True)
    assert lora["gib"] == pytest.approx(want["gib"]["total"]) and lora["fits"] and plan["budget_gib"] > 0
    assert outside.status_code == 400


def test_the_memory_estimate_follows_the_forms_bf16_keys(studio, tiny_model_dir):
    """training.frozen_bf16 / bf16_stream / chunked_loss as the form sends them reach plan's estimate."""
    from tuneforge.plan import estimate, load_arch_config

    form = {"model": str(tiny_model_dir), "stage": "sft", "training.batch_size": "4", "training.max_length": "128",
            "training.precision": "bf16-mixed"}
    keys = {"training.frozen_bf16": "false", "training.bf16_stream": "true", "training.chunked_loss": False}
    with studio() as client:
        default = client.post("/api/plan", json=form).json()
        chosen = client.post("/api/plan", json={**form, **keys}).json()
    config = load_arch_config(str(tiny_model_dir))
    for plan, kwargs in ((default, {}), (chosen, {"frozen_bf16": False, "bf16_stream": True, "chunked_loss": False})):
        lora = next(r for r in plan["rows"] if r["method"] == "lora")
        want = estimate(config, "lora", batch_size=4, seq_len=128, precision="bf16-mixed", **kwargs)
        assert lora["gib"] == pytest.approx(want["gib"]["total"])
    gib = [next(r["gib"] for r in p["rows"] if r["method"] == "lora") for p in (default, chosen)]
    assert gib[0] != pytest.approx(gib[1])  # the keys changed the estimate


def test_trainer_stages_log_live_too_and_nan_reaches_the_page_as_null(make_config, tmp_path):
    """dpo / grpo train through the HF Trainer: its log callback appends each logged step to train_log.jsonl;
    a non-finite loss (a skipped step) is null in what the studio sends."""
    from types import SimpleNamespace

    from tuneforge.studio.manager import finite, read_log
    from tuneforge.train.hf_bridge import MetricLogCallback

    out = tmp_path / "out"
    out.mkdir()
    callback = MetricLogCallback(make_config(training__report_to=[]), out)
    callback.on_train_begin(None, SimpleNamespace(global_step=0), None)
    for step, loss in ((1, 0.7), (2, float("nan"))):
        callback.on_log(None, SimpleNamespace(global_step=step), None,
                        logs={"loss": loss, "learning_rate": 1e-3, "grad_norm": 0.5})
    callback.on_log(None, SimpleNamespace(global_step=2), None, logs={"eval_loss": 0.4, "eval_runtime": 1.5})
    callback.on_log(None, SimpleNamespace(global_step=2), None, logs={"train_runtime": 3.0, "train_loss": 0.6})
    callback.on_train_end(None, None, None)
    assert read_log(out / "eval_log.jsonl") == [{"step": 2, "loss": 0.4, "runtime": 1.5}]  # the live eval points
    points = read_log(out / "train_log.jsonl")
    assert [(p["step"], p["lr"]) for p in points] == [(1, 1e-3), (2, 1e-3)]
    assert finite(points)[1]["loss"] is None and json.dumps(finite(points), allow_nan=False)


def test_predict_labels_a_file_with_a_classify_run(studio, tmp_path, tiny_bert_dir):
    from tuneforge.config.schema import Config
    from tuneforge.stages import STAGES

    run = tmp_path / "runs" / "cls"
    train = tiny.write_jsonl(tmp_path / "cls.jsonl", tiny.toy_cls_rows(32))
    STAGES["classify"](Config.model_validate({
        "model": str(tiny_bert_dir), "stage": "classify", "method": {"name": "full"}, "data": {"train": str(train)},
        "training": {"max_steps": 4, "batch_size": 8, "max_length": 64, "progress": False, "precision": "fp32"},
        "eval": {"before": False}, "output_dir": str(run), "seed": 0}))
    with studio() as client:
        r = client.post("/api/runs/cls/predict", json={"input": str(train)})
        assert r.status_code == 200, r.text
        wrong = client.post("/api/runs/cls/predict", json={"input": "/etc/hosts"})
    body = r.json()
    assert body["records"] == 32 and 0 <= body["accuracy"] <= 1 and len(body["preview"]) == 20
    assert {"predicted", "probabilities"} <= set(body["preview"][0])
    assert body["output"] == str(tmp_path / "runs" / ".studio" / "cls" / "predictions-tuned-cls.jsonl")
    assert wrong.status_code == 400 and "outside" in wrong.json()["error"]

