"""Where training scalars go: TensorBoard (default, `output_dir/tensorboard`) and, with
`training.report_to: [tensorboard, mlflow]`, MLflow (a local SQLite store `output_dir/mlflow.db` unless
`training.mlflow_tracking_uri` names another). Only rank 0 logs.

    log = open_metric_log(cfg, output_dir, purge_step); log.add_scalar("train/loss", 0.5, 1); log.close()
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tuneforge.config.schema import Config
from tuneforge.fsutil import write_text_atomic
from tuneforge.secrets import redact_config
from tuneforge.train import distributed as ddp


class MetricLog:
    def __init__(self, sinks: list[tuple[Callable[[str, float, int], None], Callable[[], None]]],
                 live: Path | None = None, live_evals: Path | None = None) -> None:
        self.sinks, self.live, self.live_evals = sinks, live, live_evals

    def add_step(self, history: list[dict], **entry) -> None:
        """Append one step's record to `history` and (rank 0) to output_dir/train_log.jsonl as it happens, so
        `tuneforge studio` or `tail -f` follow a run live; the stage rewrites the file whole when it finishes."""
        history.append(entry)
        if self.live is not None:
            with self.live.open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")

    def add_eval(self, step: int, result: dict) -> None:
        """One periodic evaluation's numbers to output_dir/eval_log.jsonl as it happens (the studio's eval curve)."""
        if self.live_evals is not None:
            with self.live_evals.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, **{k: v for k, v in result.items() if isinstance(v, (int, float))}})
                        + "\n")

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
    return MetricLog(sinks, _start_live_log(output_dir / "train_log.jsonl", purge_step),
                     _start_live_log(output_dir / "eval_log.jsonl", purge_step))


def _start_live_log(path: Path, purge_step: int | None) -> Path:
    """The live train_log.jsonl from here on: a new run starts it empty; a resumed one keeps the steps before
    `purge_step` (a killed attempt may have logged steps after its last checkpoint)."""
    kept = []
    if purge_step is not None and path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line)["step"] < purge_step:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):  # a line cut short by a kill
                continue
    write_text_atomic(path, "".join(kept))
    return path
