"""tuneforge studio without a browser, the parts beyond the form: the file picker (only the allowed folders are
listed), the upload into RUNS_DIR/data (size cap, clean names, nothing left of a refused upload), runs nested below
--runs-dir, eval points written while a run trains, and the merge / GGUF export / combine jobs with their
verification results (real `tuneforge merge` / `tuneforge export` processes)."""

from __future__ import annotations

import json
import shutil
import time

import pytest

import tiny

fastapi_testclient = pytest.importorskip("fastapi.testclient")
OCTETS = {"Content-Type": "application/octet-stream"}


@pytest.fixture
def studio(tmp_path, tiny_model_dir):
    from tuneforge.studio.app import LOOPBACK_NAMES, create_app

    def make(**kwargs):
        app = create_app(tmp_path / "runs", [tmp_path / "work", tiny_model_dir],
                         hosts=(*LOOPBACK_NAMES, "testserver"), **kwargs)
        return fastapi_testclient.TestClient(app)

    (tmp_path / "work" / "sets").mkdir(parents=True)
    return make


def _wait_done(client, url: str, timeout: float = 600) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = client.get(url).json()
        if state["status"] in ("done", "failed"):
            return state
        time.sleep(0.5)
    raise AssertionError(f"{url}: still running after {timeout} s")


def test_the_picker_lists_only_the_allowed_folders(studio, tmp_path, tiny_model_dir):
    work = tmp_path / "work"
    tiny.write_jsonl(work / "sets" / "train.jsonl", tiny.toy_sft_rows(3))
    (work / "notes.txt").write_text("x")
    (work / ".hidden.jsonl").write_text("{}\n")
    (work / "escape").symlink_to(tmp_path.parent)  # a link inside a root to a folder outside it
    with studio() as client:
        roots = client.get("/api/files").json()
        top = client.get("/api/files", params={"dir": str(work)}).json()
        sets = client.get("/api/files", params={"dir": str(work / "sets")}).json()
        refused = [client.get("/api/files", params={"dir": d}) for d in
                   ("/etc", str(work / ".." / ".."), str(work / "escape"), str(tmp_path))]
        missing = client.get("/api/files", params={"dir": str(work / "nope")})
    assert [e["path"] for e in roots["entries"]] == [str(work), str(tiny_model_dir), str(tmp_path / "runs")]
    assert [(e["name"], e["kind"], e["data"]) for e in top["entries"]] == [
        ("escape", "dir", False), ("sets", "dir", False), ("notes.txt", "file", False)]  # folders first, no dotfiles
    assert top["parent"] is None and sets["parent"] == str(work)  # a root has no way up
    assert [(e["name"], e["data"], e["size"]) for e in sets["entries"]] == [
        ("train.jsonl", True, (work / "sets" / "train.jsonl").stat().st_size)]
    for r in refused:
        assert r.status_code == 400 and "outside the studio's allowed folders" in r.json()["error"]
    assert missing.status_code == 400 and "not a folder" in missing.json()["error"]


def test_uploads_land_in_the_runs_data_folder_capped_and_cleaned(studio, tmp_path):
    body = tiny.write_jsonl(tmp_path / "t.jsonl", tiny.toy_sft_rows(4)).read_bytes()
    data = tmp_path / "runs" / "data"

    def chunks(n: int):  # no Content-Length: the cap is counted as the body arrives
        for _ in range(n):
            yield b"x" * 100

    with studio(upload_max_bytes=len(body) + 10) as client:
        first = client.post("/api/upload", params={"name": "../../evil dir/My Set!.JSONL"}, content=body,
                            headers=OCTETS)
        second = client.post("/api/upload", params={"name": "My Set!.jsonl"}, content=body, headers=OCTETS)
        declared = client.post("/api/upload", params={"name": "big.jsonl"}, content=body + b"x" * 20, headers=OCTETS)
        counted = client.post("/api/upload", params={"name": "big.jsonl"}, content=chunks(50), headers=OCTETS)
        suffix = client.post("/api/upload", params={"name": "run.sh"}, content=b"rm -rf /", headers=OCTETS)
        as_text = client.post("/api/upload", params={"name": "a.jsonl"}, content=body,
                              headers={"Content-Type": "text/plain"})
        foreign = client.post("/api/upload", params={"name": "a.jsonl"}, content=body,
                              headers={**OCTETS, "Origin": "http://evil.example"})
        octets_elsewhere = client.post("/api/validate", content=b"{}", headers=OCTETS)
        preview = client.post("/api/data", json={"path": first.json()["path"], "stage": "sft"}).json()
    assert first.status_code == 200 and first.json() == {"path": str(data / "My_Set_.jsonl"), "name": "My_Set_.jsonl",
                                                         "bytes": len(body)}
    assert second.json()["path"] == str(data / "My_Set_-1.jsonl")  # never over an earlier upload
    assert (data / "My_Set_.jsonl").read_bytes() == body and preview["ok"] and preview["records"] == 4
    for refused in (declared, counted):
        assert refused.status_code == 413 and "over the studio's limit" in refused.json()["error"]
    assert suffix.status_code == 400 and "expected a data file" in suffix.json()["error"]
    assert (as_text.status_code, foreign.status_code, octets_elsewhere.status_code) == (415, 403, 415)
    assert sorted(p.name for p in data.iterdir()) == ["My_Set_-1.jsonl", "My_Set_.jsonl"]  # no partial files


def test_runs_nested_below_the_runs_dir_are_found(studio, tmp_path, sft_run):
    runs = tmp_path / "runs"
    for name in ("exp1/a", "exp1/b", "cmp/lora", "hpo/trials/trial-0000"):
        shutil.copytree(sft_run, runs / name)
    shutil.copy(sft_run / "config.yaml", runs / "cmp" / "config.yaml")  # a compare's own config sits above its runs
    with studio() as client:
        listed = client.get("/api/runs").json()["runs"]
        detail = client.get("/api/runs/exp1/a").json()
        encoded = client.get("/api/runs/exp1%2Fb")
        merge = client.get("/api/runs/exp1/a/merge").json()
        finished = client.post("/api/runs/hpo/trials/trial-0000/resume", json={})
        clash = client.post("/api/validate", json={"name": "data"})
    assert [(r["name"], r["status"]) for r in listed] == [
        ("cmp/lora", "finished"), ("exp1/a", "finished"), ("exp1/b", "finished"), ("hpo/trials/trial-0000", "finished")]
    assert detail["name"] == "exp1/a" and detail["step"] == 20 and detail["metrics"]["eval_after"]["loss"] > 0
    assert encoded.status_code == 200 and encoded.json()["name"] == "exp1/b"
    assert merge["status"] == "none"
    assert finished.status_code == 400 and "has finished" in finished.json()["error"]
    assert "name" in clash.json()["errors"]  # RUNS_DIR/data holds uploads


def test_eval_points_are_logged_while_training_and_sent_with_the_run(make_config, tmp_path, studio, monkeypatch):
    from tuneforge.stages import STAGES
    from tuneforge.train.metric_log import MetricLog, _start_live_log

    seen = []
    cfg = make_config(training__max_steps=4, training__eval_steps=2, eval__before=False, eval__generate_samples=0,
                      output_dir=str(tmp_path / "runs" / "live"))
    import tuneforge.train.loop as loop

    real = loop.open_metric_log

    def spy(*args, **kwargs):  # what eval_log.jsonl holds at each periodic eval, i.e. before the run ends
        writer = real(*args, **kwargs)
        add = writer.add_eval
        writer.add_eval = lambda step, result: (add(step, result), seen.append(writer.live_evals.read_text()))
        return writer

    monkeypatch.setattr(loop, "open_metric_log", spy)
    run = STAGES["sft"](cfg)
    evals = json.loads((run / "metrics.json").read_text())["evals"]
    assert [json.loads(x)["step"] for x in seen[0].splitlines()] == [2] and len(seen) == 2
    assert [(e["step"], e["loss"]) for e in map(json.loads, seen[1].splitlines())] == [
        (e["step"], e["loss"]) for e in evals]
    with studio() as client:
        detail = client.get("/api/runs/live").json()
    assert [(e["step"], e["loss"]) for e in detail["evals"]] == [(e["step"], e["loss"]) for e in evals]
    log = tmp_path / "e.jsonl"  # resumed from the checkpoint at step 2: evals after it are dropped, as steps are
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (2, 4, 6)))
    MetricLog([], None, _start_live_log(log, purge_step=3)).add_eval(4, {"loss": 0.5, "note": "x"})
    assert [json.loads(x) for x in log.read_text().splitlines()] == [{"step": 2, "loss": 1.0}, {"step": 4, "loss": 0.5}]


def test_combine_and_export_show_their_verification(studio, tmp_path, make_config):
    """Two LoRA runs combined (tuneforge merge --combine, verified: merge.json), and a GGUF export whose converter
    refuses the tiny test tokenizer: the page gets the process's error. Both jobs run at once."""
    from tuneforge.stages import STAGES

    runs = tmp_path / "runs"
    for seed, name in enumerate(("a", "b")):  # short runs: small weights, so fp32 rounding stays far below 1e-4
        STAGES["sft"](make_config(training__max_steps=3, training__learning_rate=1e-2, eval__before=False,
                                  eval__generate_samples=0, seed=seed, output_dir=str(runs / name)))
    with studio() as client:
        bad = [client.post("/api/combine", json=body) for body in (
            {"runs": ["a"], "name": "ab"}, {"runs": ["a", "b"], "name": "a"}, {"runs": ["a", "b"], "name": "x/y"},
            {"runs": ["a", "b"], "name": "ab", "how": "average"}, {"runs": ["a", "b"], "name": "ab", "weights": "1"})]
        started = client.post("/api/combine", json={"runs": ["a", "b"], "name": "ab", "weights": "0.7,0.3"})
        export = client.post("/api/runs/a/export", json={"quant": "f16"})
        assert started.status_code == 200 and export.status_code == 200, (started.text, export.text)
        busy = client.post("/api/runs/a/merge", json={}).json()["error"]
        assert busy == "a: its export is running; wait for it to end"
        assert client.post("/api/runs/a/export", json={"quant": "q4"}).status_code == 400
        exported = _wait_done(client, "/api/runs/a/export")
        deadline = time.time() + 600
        while (listed := client.get("/api/combine").json()["combined"])[0]["status"] == "running":
            assert time.time() < deadline
            time.sleep(0.5)
        again = client.post("/api/combine", json={"runs": ["a", "b"], "name": "ab"})
    assert [r.status_code for r in bad] == [400] * 5
    assert "at least two" in bad[0].json()["error"] and "not a run's" in bad[1].json()["error"]
    assert "expected one of" in bad[3].json()["error"] and "2 runs" in bad[4].json()["error"]
    (combined,) = listed
    report = json.loads((runs / "ab" / "merge.json").read_text())
    assert combined["status"] == "done", combined["log"]
    assert combined["report"] == report and report["weights"] == [0.7, 0.3] and report["how"] == "linear"
    decided = report.get("max_abs_logit_diff_fp64") or report["max_abs_logit_diff"]  # fp64 decides when there
    assert decided <= report["atol"] == 1e-4
    assert combined["command"].startswith("tuneforge merge --combine ")
    assert again.status_code == 400 and "taken" in again.json()["error"]
    assert exported["status"] == "failed" and "cannot convert this model" in exported["log"]
    assert exported["command"] == f"tuneforge export {runs / 'a'} --format gguf --quant f16"
    assert not list((runs / "a").glob("*.gguf*"))
