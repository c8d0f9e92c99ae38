"""bench/defaults_study.py's smallest unit, in CI so the study cannot rot: two tasks x two settings x one seed on
the tiny models, through the real stages; the table in the written markdown is computed from the runs' own
metrics.json figures (kept in the JSON beside it)."""

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("defaults_study", ROOT / "bench" / "defaults_study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["defaults_study"] = module
    spec.loader.exec_module(module)
    return module


def test_rank_shares_ties(study):
    assert study.rank({"a": 0.9, "b": 0.5, "c": 0.9}, True) == {"a": 1.5, "c": 1.5, "b": 3}
    assert study.rank({"a": 1.2, "b": 0.7}, False) == {"b": 1, "a": 2}


def test_table_means_ranks_and_sorts(study):
    results = {"facts": {"a": [{"value": 0.5}, {"value": 0.7}], "b": [{"value": 0.9}, {"value": 0.9}]},
               "pretrain": {"a": [{"value": 1.0}], "b": [{"value": 2.0}]}}
    lines, mean_rank = study.table(results, ["facts", "pretrain"], ["a", "b"])
    assert mean_rank == {"a": 1.5, "b": 1.5}
    assert lines[2] == "| a | 0.600 ±0.141 (2) | 1.000 (1) | 1.50 |"
    assert lines[3] == "| b | 0.900 ±0.000 (1) | 2.000 (2) | 1.50 |"


def test_the_verdict_line_counts_flags_among_short_and_near_runs(study):
    results = {"facts": {"a": [{"value": 0.99, "under_learned": False}, {"value": 0.97, "under_learned": True}],
                         "b": [{"value": 0.40, "under_learned": True}, {"value": 0.90, "under_learned": False}]},
               "pretrain": {"a": [{"value": 0.30, "under_learned": False}],
                            "b": [{"value": 0.35, "under_learned": True}]}}
    (line, _) = study.verdict_lines(results, ["facts", "pretrain"], ["a", "b"])  # best: facts a 0.98, pretrain a
    assert "2 of the 3 runs further than 0.02 from their task's best setting were flagged under-learned" in line
    assert "1 of the 3 runs within 0.02 of it were" in line and "rising" not in line
    results["facts"]["b"][0]["diverged"] = True  # recorded since session 18: the line says how many rose
    results["facts"]["a"][0]["diverged"] = False
    (line, _) = study.verdict_lines(results, ["facts", "pretrain"], ["a", "b"])
    assert ("A rising training loss (`diverged`, with a lower rate suggested) was flagged in 1 of the short runs "
            "and 0 of the near ones; a high flat end (`stuck`) in 0 and 0.") in line
    results["facts"]["a"][0].pop("under_learned")  # a study from before runs recorded the verdict: no line
    assert study.verdict_lines(results, ["facts", "pretrain"], ["a", "b"]) == []


def test_a_method_setting_scales_its_own_rate_and_names_its_schedule(study, tmp_path):
    from tuneforge.methods import METHODS

    assert METHODS["ia3"].default_lr != METHODS["lora"].default_lr  # so the rate below is IA3's, not LoRA's
    task = study.TASKS["facts"]
    f = tmp_path / "rows.jsonl"
    f.write_text("{}\n")
    cfg = study.build_config(task, study.SETTINGS["ia3+constant+lr x3"], "m", f, f, 1, tmp_path / "run", 0)
    assert cfg.method.name == "ia3" and cfg.training.learning_rate == pytest.approx(3 * METHODS["ia3"].default_lr)
    assert cfg.training.lr_scheduler == "constant" and cfg.training.warmup_ratio == 0.0
    plain = study.build_config(task, study.SETTINGS["prefix"], "m", f, f, 1, tmp_path / "run", 0)
    assert plain.method.name == "prefix" and plain.training.learning_rate is None  # the method's default, unnamed
    assert "lr_scheduler" not in plain.training.model_fields_set  # what ships decides the schedule


@pytest.mark.slow  # two tiny classify runs, recipe-sized (152 optimizer steps each): the study's CI unit
def test_quick_unit_writes_the_table_from_real_runs(study, tiny_bert_dir, tmp_path, monkeypatch):
    out, js = tmp_path / "defaults.md", tmp_path / "defaults.json"
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # the two worker processes import the study by name
    study.main(["--quick", "--tasks", "classify", "--settings", "defaults,lr x4", "--seeds", "0", "--workers", "2",
                "--threads", "1", "--cls-model", str(tiny_bert_dir), "--out", str(out), "--json", str(js)])
    saved = json.loads(js.read_text())
    results = saved["results"]["classify"]
    assert saved["workers"] == 2
    md = out.read_text()
    assert "python bench/defaults_study.py --quick --tasks classify" in md
    for setting in ("defaults", "lr x4"):
        (run,) = results[setting]
        assert 0.0 <= run["value"] <= 1.0 and run["steps"] == 160 and run["epochs"] == 20  # 8 steps a pass, capped
        assert run["precision"] in ("fp32", "bf16") and run["cpu"]  # what each figure was measured with
        row = next(line for line in md.splitlines() if line.startswith(f"| {setting} |"))
        value = float(re.match(r"([0-9.]+)", row.strip("|").split("|")[1].strip()).group(1))
        assert value == pytest.approx(run["value"], abs=1e-3)  # the cell is the run's own metrics.json figure
    assert results["lr x4"][0]["learning_rate"] == pytest.approx(4 * results["defaults"][0]["learning_rate"])


def test_render_writes_a_partial_study_from_its_json(study, tmp_path):
    run = {"value": 0.5, "seed": 0, "steps": 40, "learning_rate": 2e-4, "epochs": 20.0, "seconds": 1.0}
    saved = {"command": "python bench/defaults_study.py --quick", "models": {"lm": "m", "cls": "c"},
             "results": {"classify": {"defaults": [run], "lr x2": [{**run, "value": 0.75}]},
                         "facts": {"defaults": [{**run, "value": 0.25}], "lr x2": []}}}
    (tmp_path / "s.json").write_text(json.dumps(saved))
    (tmp_path / "d.md").write_text("old table\n" + study.NOTES + "\nhand-written findings\n")
    out = study.main(["--render", "--json", str(tmp_path / "s.json"), "--out", str(tmp_path / "d.md")])
    md = out.read_text()
    assert "old table" not in md and md.endswith(study.NOTES + "\nhand-written findings\n")
    assert "| lr x2 | 0.750 (1) | - | 1.00 |" in md and "| defaults | 0.500 (2) | 0.250 (1) | 1.50 |" in md
    # lr x2 ranks first but ran on one task only: the best is named among the settings that ran on every task
    assert "run on every task: **defaults** (1 other(s) ran on only some tasks and rank only there)." in md


def test_resume_adds_a_grid_and_keeps_every_earlier_run_and_command(study, tmp_path, monkeypatch):
    """--resume with another grid: the runs already in the JSON (other tasks and settings too) are kept and not
    run again, the new ones are added, every invocation's command is listed, and the table shows them all."""
    ran = []

    def fake_run(task, setting, model, seed, work, quick):
        ran.append((task, setting, seed))
        return {"value": 0.9 if setting == "lr x2" else 0.4, "seconds": 1.0, "steps": 10, "learning_rate": 1e-3,
                "epochs": 3.0, "under_learned": False}

    monkeypatch.setattr(study, "run_one", fake_run)
    js, md = tmp_path / "s.json", tmp_path / "d.md"
    study.main(["--tasks", "classify", "--settings", "defaults", "--seeds", "0", "--json", str(js), "--out", str(md)])
    study.main(["--resume", "--tasks", "classify,facts", "--settings", "defaults,lr x2", "--seeds", "0",
                "--json", str(js), "--out", str(md)])
    assert ran == [("classify", "defaults", 0), ("classify", "lr x2", 0),
                   ("facts", "defaults", 0), ("facts", "lr x2", 0)]
    saved = json.loads(js.read_text())
    assert {t: {s: len(r) for s, r in v.items()} for t, v in saved["results"].items()} == {
        "classify": {"defaults": 1, "lr x2": 1}, "facts": {"defaults": 1, "lr x2": 1}}
    assert saved["command"].splitlines() == [
        "python bench/defaults_study.py --tasks classify --settings defaults --seeds 0 --json "
        f"{js} --out {md}",
        "python bench/defaults_study.py --resume --tasks classify,facts --settings 'defaults,lr x2' --seeds 0 "
        f"--json {js} --out {md}"]
    text = md.read_text()
    assert "| lr x2 | 0.900 (1) | 0.900 (1) | 1.00 |" in text and "| defaults | 0.400 (2) | 0.400 (2) | 2.00 |" in text


@pytest.mark.parametrize("doc_name, runs", [("defaults.md", "defaults_study.json"),
                                            ("defaults-zen4.md", "defaults_zen4.json"),
                                            ("defaults-dropout-clip.md", "defaults_dropout_clip.json"),
                                            ("defaults-full-schedule.md", "defaults_full_schedule.json"),
                                            ("defaults-methods.md", "defaults_methods.json"),
                                            ("defaults-methods-quickstart.md", "defaults_methods_quickstart.json")])
def test_shipped_doc_is_the_render_of_the_shipped_runs(study, tmp_path, doc_name, runs):
    """docs/defaults.md's (and defaults-zen4.md's) table is computed from its JSON of runs, not typed."""
    doc = ROOT / "docs" / doc_name
    copy = tmp_path / doc_name
    copy.write_text(doc.read_text(encoding="utf-8"), encoding="utf-8")
    study.main(["--render", "--json", str(ROOT / "bench" / "results" / runs), "--out", str(copy)])
    assert copy.read_text(encoding="utf-8") == doc.read_text(encoding="utf-8")


def test_the_quickstart_no_clip_note_is_its_json():
    """docs/defaults-dropout-clip.md's session-15 note quotes bench/results/defaults_noclip_quickstart_s15.json."""
    runs = json.loads((ROOT / "bench" / "results" / "defaults_noclip_quickstart_s15.json").read_text())
    values = {r["seed"]: r["value"] for r in runs["results"]["quickstart"]["no-clip"]}
    clip = json.loads((ROOT / "bench" / "results" / "defaults_dropout_clip.json").read_text())
    dropout0 = {r["seed"]: r["value"] for r in clip["results"]["quickstart"]["dropout-0"]}
    assert values == {0: dropout0[0], 1: dropout0[1]}
    text = " ".join((ROOT / "docs" / "defaults-dropout-clip.md").read_text().split())
    assert f"exact match {values[0]:.3f} and {values[1]:.3f} on seeds 0 and 1" in text
