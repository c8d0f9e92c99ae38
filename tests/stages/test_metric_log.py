"""Training scalars reach TensorBoard by default and MLflow when asked (a local file store in the run)."""

import importlib.util
import json

import pytest

from tuneforge.config.checks import check_config
from tuneforge.errors import ConfigError
from tuneforge.stages import STAGES


def test_mlflow_gets_the_same_losses_as_the_train_log(make_config, tmp_path):
    from mlflow.tracking import MlflowClient

    cfg = make_config(training__max_steps=4, training__report_to=["tensorboard", "mlflow"],
                      eval__generate_samples=0, eval__before=False)
    out = STAGES["sft"](cfg)
    logged = [json.loads(x)["loss"] for x in (out / "train_log.jsonl").read_text().splitlines()]
    client = MlflowClient(tracking_uri=f"sqlite:///{(out / 'mlflow.db').resolve()}")
    [experiment] = [e for e in client.search_experiments() if e.name == "tuneforge"]
    [run] = client.search_runs([experiment.experiment_id])
    history = sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert [m.value for m in history] == pytest.approx(logged)
    assert run.data.params["training.max_steps"] == "4" and run.info.status == "FINISHED"
    assert any((out / "tensorboard").iterdir())


def test_mlflow_missing_is_a_config_error(make_config, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match="training.report_to.*mlflow"):
        check_config(make_config(training__report_to=["mlflow"]))
