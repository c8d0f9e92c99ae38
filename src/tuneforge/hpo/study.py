"""An Optuna study over any dotted config key: each trial is a normal in-process run of the config's
stage with the sampled values as overrides, in its own directory under the study dir. Periodic eval
results feed a MedianPruner; a failed trial is recorded as FAILED and the study goes on; the study lives
in (and resumes from) an RDB storage that several workers can share.

    run_study("examples/quickstart.yaml", "examples/hpo/space.yaml", trials=8, study_dir=Path("runs/hpo"))

Search space file (YAML), one entry per dotted key:
    training.learning_rate: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
    method.r: {type: int, low: 4, high: 32, step: 4}
    method.name: [lora, ia3]                  # a list is a categorical choice
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from tuneforge.config.load import load_config
from tuneforge.errors import ConfigError, TrainingInterrupted

KINDS = ("float", "int", "categorical")
SAMPLERS = ("tpe", "random", "grid")


class TrialFailed(Exception):
    """A trial's own failure (bad sampled value, diverged run, any bug): recorded as FAILED, the study goes on.
    Anything else (an interrupt) stops the study."""


@dataclass(frozen=True)
class Param:
    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple | None = None

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices or ()))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), step=self.step, log=self.log)


def _number(value: Any, where: str) -> float:
    try:
        return float(value)  # YAML 1.1 reads 1e-5 (no dot) as a string
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a number (got {value!r})") from None


def _param(key: str, spec: Any, source: str) -> Param:
    where = f"{source}: key {key!r}"
    if isinstance(spec, list):
        spec = {"type": "categorical", "choices": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a list of choices or a mapping with type/low/high (got {spec!r})")
    kind = spec.get("type", "categorical" if "choices" in spec else "float")
    unknown = set(spec) - {"type", "low", "high", "step", "log", "choices"}
    if kind not in KINDS or unknown:
        raise ConfigError(f"{where}: expected type one of {', '.join(KINDS)} and keys type/low/high/step/log/choices "
                          f"(got type {kind!r}{', unknown ' + ', '.join(sorted(unknown)) if unknown else ''})")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: expected a non-empty list under 'choices'")
        return Param(key, kind, choices=tuple(choices))
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: a {kind} range needs 'low' and 'high'")
    low, high = _number(spec["low"], where + " low"), _number(spec["high"], where + " high")
    if not low < high or (spec.get("log") and low <= 0):
        raise ConfigError(f"{where}: expected 0 < low < high for a log range, low < high otherwise (got {low}, {high})")
    step = _number(spec["step"], where + " step") if spec.get("step") is not None else None
    return Param(key, kind, low, high, step, bool(spec.get("log", False)))


def load_space(path: str | Path) -> list[Param]:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read search space: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: expected a mapping of dotted config keys to ranges, e.g. "
                          "training.learning_rate: {type: float, low: 1e-5, high: 1e-2, log: true}")
    return [_param(str(key), spec, str(path)) for key, spec in raw.items()]


def to_overrides(params: dict[str, Any]) -> list[str]:
    """Sampled values as `key=value` overrides (JSON scalars read back as the same YAML values)."""
    return [f"{key}={json.dumps(value)}" for key, value in params.items()]


def default_direction(metric: str) -> str:
    return "minimize" if metric.endswith(("loss", "perplexity")) else "maximize"


def _metric_key(metric: str) -> str:
    """`eval_loss` -> `loss`: the name the metric has in eval results and metrics.json's eval_after."""
    return metric.removeprefix("eval_")


def read_objective(run_dir: Path, metric: str) -> float:
    after = json.loads((run_dir / "metrics.json").read_text()).get("eval_after") or {}
    key = _metric_key(metric)
    if key not in after:
        raise ConfigError(f"--metric {metric!r}: the run's eval_after has no {key!r} "
                          f"(has: {', '.join(k for k, v in after.items() if isinstance(v, int | float))})")
    return float(after[key])


def make_objective(config: str | Path, overrides: list[str], space: list[Param], study_dir: Path, metric: str,
                   log: Callable[[str], None]) -> Callable[[optuna.Trial], float]:
    from tuneforge.stages import STAGES

    key = _metric_key(metric)

    def objective(trial: optuna.Trial) -> float:
        params = {p.key: p.suggest(trial) for p in space}
        run_dir = study_dir / "trials" / f"trial-{trial.number:04d}"
        trial.set_user_attr("output_dir", str(run_dir))

        def on_eval(step: int, result: dict) -> None:
            if isinstance(result.get(key), int | float):
                trial.report(float(result[key]), step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"{metric} {result[key]:.4g} at step {step}")

        log(f"trial {trial.number}: {params}")
        try:
            cfg = load_config(config, [*overrides, *to_overrides(params), f"output_dir={json.dumps(str(run_dir))}"])
            STAGES[cfg.stage].run(cfg, on_eval=on_eval)
            value = read_objective(run_dir, metric)
        except (optuna.TrialPruned, TrainingInterrupted, KeyboardInterrupt):
            raise
        except Exception as exc:  # any failure is this trial's, not the study's
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            log(f"trial {trial.number} failed: {type(exc).__name__}: {exc}")
            raise TrialFailed(str(exc)) from exc
        log(f"trial {trial.number}: {metric} = {value:.6g}")
        return value

    return objective


def to_sampler(name: str, space: list[Param], seed: int | None) -> optuna.samplers.BaseSampler:
    if name == "grid":
        if any(p.kind != "categorical" for p in space):
            raise ConfigError("--sampler grid: every key in the search space must be a list of choices")
        return optuna.samplers.GridSampler({p.key: list(p.choices or ()) for p in space}, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def run_study(config: str | Path, space_file: str | Path, trials: int, study_dir: Path, *,
              overrides: list[str] | None = None, storage: str | None = None, study_name: str | None = None,
              metric: str = "eval_loss", direction: str | None = None, sampler: str = "tpe",
              prune: bool = True, seed: int | None = None, log: Callable[[str], None] = print) -> optuna.Study:
    """Add `trials` trials to the study (created, or loaded from `storage` if it exists) and return it."""
    overrides = overrides or []
    space = load_space(space_file)
    load_config(config, overrides)  # a bad base config is the user's error, not N failed trials
    study_dir.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(study_dir / 'study.db').resolve()}"
    direction = direction or default_direction(metric)
    optuna.logging.set_verbosity(logging.WARNING)
    study = optuna.create_study(
        storage=storage, study_name=study_name or Path(config).stem, direction=direction, load_if_exists=True,
        sampler=to_sampler(sampler, space, seed),  # seed None: workers sharing a storage sample differently
        pruner=(optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0) if prune
                else optuna.pruners.NopPruner()),
    )
    if study.direction.name.lower() != direction:
        raise ConfigError(f"--direction {direction}: study {study.study_name!r} in {storage} was created to "
                          f"{study.direction.name.lower()}")
    study.set_user_attr("metric", metric)
    study.set_user_attr("config", str(Path(config).resolve()))
    study.set_user_attr("overrides", overrides)
    objective = make_objective(config, overrides, space, study_dir, metric, log)
    study.optimize(objective, n_trials=trials, catch=(TrialFailed,), gc_after_trial=True)
    return study
