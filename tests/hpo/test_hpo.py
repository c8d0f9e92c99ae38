"""`tuneforge hpo` on the tiny model: the planted best learning rate wins, a failing trial is recorded and
the study goes on, a second call resumes the same study from its SQLite storage, the pruner sees evals."""

import csv
import json

import optuna
import pytest

from tuneforge.cli import main
from tuneforge.config.load import dump_config, load_config
from tuneforge.errors import ConfigError
from tuneforge.hpo.study import load_space, run_study, to_overrides

# only 3e-2 learns in 8 steps; 1e-5 barely moves, 3.0 diverges, -1.0 is rejected by the config schema
LRS = [1.0e-5, 3.0e-2, 3.0, -1.0]


@pytest.fixture
def study_inputs(make_config, tmp_path):
    cfg = make_config(output_dir=str(tmp_path / "base"), training__max_steps=8, training__eval_steps=4,
                      eval__before=False, eval__generate_samples=0)
    config = tmp_path / "base.yaml"
    config.write_text(dump_config(cfg))
    space = tmp_path / "space.yaml"
    space.write_text("training.learning_rate: [1.0e-5, 3.0e-2, 3.0, -1.0]\n")
    return config, space, tmp_path / "study"


def test_study_finds_planted_lr_survives_failure_and_resumes(study_inputs, capsys):
    config, space, study_dir = study_inputs
    first = run_study(config, space, 2, study_dir, sampler="grid", seed=0, log=lambda _m: None)
    assert len(first.trials) == 2
    # second call, through the CLI, on the same storage: adds trials to the same study
    code = main(["hpo", str(config), "--space", str(space), "--trials", "2", "--output", str(study_dir),
                 "--sampler", "grid", "--seed", "0"])
    assert code == 0, capsys.readouterr().err
    study = optuna.load_study(study_name="base", storage=f"sqlite:///{(study_dir / 'study.db').resolve()}")
    assert len(study.trials) == 4
    assert sorted(t.params["training.learning_rate"] for t in study.trials) == sorted(LRS)

    by_lr = {t.params["training.learning_rate"]: t for t in study.trials}
    failed = by_lr[-1.0]
    assert failed.state == optuna.trial.TrialState.FAIL and "learning_rate" in failed.user_attrs["error"]
    assert study.best_trial.params == {"training.learning_rate": 3.0e-2}
    assert by_lr[3.0e-2].intermediate_values  # the pruner was fed periodic eval losses
    slow = by_lr[1.0e-5]
    if slow.state == optuna.trial.TrialState.COMPLETE:
        assert study.best_value < slow.value

    best = load_config(study_dir / "best_config.yaml")  # a runnable config with the best value
    assert best.training.learning_rate == 3.0e-2 and best.training.max_steps == 8
    rows = list(csv.DictReader((study_dir / "trials.csv").open()))
    assert sorted(r["state"] for r in rows).count("FAIL") == 1 and len(rows) == 4
    assert (study_dir / "history.png").stat().st_size > 0
    report = (study_dir / "report.md").read_text()
    assert "Best: trial" in report and "1 fail" in report
    metrics = json.loads((study_dir / "trials" / f"trial-{by_lr[3.0e-2].number:04d}" / "metrics.json").read_text())
    assert metrics["eval_after"]["loss"] == pytest.approx(study.best_value)


def test_pruned_trial_stops_training(study_inputs):
    """A trial whose first evaluation is worse than the median of earlier ones is stopped there."""
    config, space, study_dir = study_inputs
    space.write_text("training.learning_rate: [1.0e-5, 3.0e-2]\n")
    study_dir.mkdir()
    storage = f"sqlite:///{(study_dir / 'study.db').resolve()}"
    planted = optuna.create_study(storage=storage, study_name="base", direction="minimize")
    for lr in (3.0e-2, 3.0e-2, 1.0e-5):  # two good trials, then one worse at its first eval (step 4)
        planted.enqueue_trial({"training.learning_rate": lr})
    study = run_study(config, space, 3, study_dir, storage=storage, seed=0, log=lambda _m: None)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED"]
    last = study.trials[-1]
    assert list(last.intermediate_values) == [4]
    assert not (study_dir / "trials" / f"trial-{last.number:04d}" / "metrics.json").exists()


def test_space_errors_name_file_and_key(tmp_path):
    bad = tmp_path / "space.yaml"
    bad.write_text("training.learning_rate: {type: float, low: 0, high: 1e-2, log: true}\n")
    with pytest.raises(ConfigError, match=r"space.yaml: key 'training.learning_rate'.*low"):
        load_space(bad)
    bad.write_text("method.r: {type: integer, low: 4, high: 8}\n")
    with pytest.raises(ConfigError, match="method.r.*expected type one of float, int, categorical"):
        load_space(bad)
    ok = tmp_path / "ok.yaml"
    ok.write_text("method.r: {type: int, low: 4, high: 32, step: 4}\nmethod.name: [lora, ia3]\n")
    assert [(p.key, p.kind) for p in load_space(ok)] == [("method.r", "int"), ("method.name", "categorical")]
    assert to_overrides({"training.learning_rate": 1e-05, "method.name": "ia3"}) == [
        "training.learning_rate=1e-05", 'method.name="ia3"']


def test_shipped_spaces_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "examples" / "hpo"
    spaces = {p.name: load_space(p) for p in root.glob("*.yaml")}
    assert {"space.yaml", "lr_grid.yaml"} <= set(spaces)
    assert all(p.kind == "categorical" for p in spaces["lr_grid.yaml"])  # usable with --sampler grid
