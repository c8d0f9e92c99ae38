"""Where training scalars go: TensorBoard (default, `output_dir/tensorboard`) and, with
`training.report_to: [tensorboard, mlflow]`, MLflow (a local SQLite store `output_dir/mlflow.db` unless
`training.mlflow_tracking_uri` names another). Only rank 0 logs.

    log = open_metric_log(cfg, output_dir, purge_step); log.add_scalar("train/loss", 0.5, 1); log.close()
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tuneforge.config.schema import Config
from tuneforge.secrets import redact_config
from tuneforge.train import distributed as ddp


class MetricLog:
    def __init__(self, sinks: list[tuple[Callable[[str, float, int], None], Callable[[], None]]]) -> None:
        self.sinks = sinks

    def add_scalar(self, name: str, value: float, step: int) -> None:
        for write, _ in self.sinks:
            write(name, float(value), step)

    def close(self) -> None:
        for _, close in self.sinks:
            close()


def _flat(prefix: str, value) -> dict[str, str]:
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in _flat(f"{prefix}.{key}" if prefix else key, sub).items()}
    return {prefix: str(value)[:500]}  # MLflow caps parameter values


def _mlflow_sink(cfg: Config, output_dir: Path):
    import mlflow

    mlflow.set_tracking_uri(cfg.training.mlflow_tracking_uri or f"sqlite:///{(output_dir / 'mlflow.db').resolve()}")
    mlflow.set_experiment(cfg.training.mlflow_experiment)
    run = mlflow.start_run(run_name=output_dir.name)
    mlflow.log_params(_flat("", redact_config(cfg.model_dump(mode="json"))))  # no tokens / passwords in params
    client, run_id = mlflow.tracking.MlflowClient(), run.info.run_id
    return (lambda name, value, step: client.log_metric(run_id, name, value, step=step)), mlflow.end_run


def open_metric_log(cfg: Config, output_dir: Path, purge_step: int | None) -> MetricLog:
    if not ddp.is_main():
        return MetricLog([])
    sinks = []
    if "tensorboard" in cfg.training.report_to:
        from torch.utils.tensorboard import SummaryWriter  # imports slowly; only needed here

        writer = SummaryWriter(str(output_dir / "tensorboard"), purge_step=purge_step)
        sinks.append((writer.add_scalar, writer.close))
    if "mlflow" in cfg.training.report_to:
        sinks.append(_mlflow_sink(cfg, output_dir))
    return MetricLog(sinks)
