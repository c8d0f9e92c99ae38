"""What a study leaves in its directory: the best config as a runnable YAML, the trials as a table
(markdown + CSV), optimisation-history and parameter-importance plots, and report.md tying them together.

    write_study_report(study, Path("runs/hpo"))
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path

import optuna

from tuneforge.config.load import dump_config, load_config
from tuneforge.fsutil import save_figure_atomic, write_text_atomic
from tuneforge.hpo.study import to_overrides


def trial_rows(study: optuna.Study) -> list[dict]:
    keys = sorted({k for t in study.trials for k in t.params})
    rows = []
    for t in study.trials:
        seconds = ((t.datetime_complete - t.datetime_start).total_seconds()
                   if t.datetime_complete and t.datetime_start else None)
        rows.append({"trial": t.number, "state": t.state.name, "value": t.value,
                     "seconds": round(seconds, 1) if seconds is not None else None,
                     **{k: t.params.get(k) for k in keys}, "error": t.user_attrs.get("error", "")})
    return rows


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def to_markdown(rows: list[dict]) -> str:
    if not rows:
        return "(no trials)\n"
    cols = list(rows[0])

    def cell(v) -> str:
        text = f"{v:.6g}" if isinstance(v, float) else ("" if v is None else str(v))
        return text.replace("|", "\\|").replace("\n", " ")[:120]

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def best_config_yaml(study: optuna.Study, study_dir: Path) -> str | None:
    """The base config with the best trial's values, resolved and validated, ready for `tuneforge train`."""
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        return None
    best, metric = study.best_trial, study.user_attrs.get("metric", "objective")
    cfg = load_config(study.user_attrs["config"], [*study.user_attrs.get("overrides", []), *to_overrides(best.params),
                                                   f"output_dir={json.dumps(str(study_dir / 'best'))}"])
    header = (f"# best of study {study.study_name!r}: {metric} = {best.value:.6g} (trial {best.number}, "
              f"{json.dumps(best.params)})\n# run: tuneforge train {study_dir / 'best_config.yaml'}\n")
    return header + dump_config(cfg)


def write_plots(study: optuna.Study, study_dir: Path) -> dict[str, str]:
    """{file name or 'importance_note': why it is missing}. Importances need >= 2 completed trials."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as ovm

    written: dict[str, str] = {}
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if done:
            ax = ovm.plot_optimization_history(study)
            save_figure_atomic(ax.figure, study_dir / "history.png")
            written["history.png"] = "optimisation history"
        if len(done) < 2:
            written["importance_note"] = f"parameter importances need >= 2 completed trials (have {len(done)})"
            return written
        try:
            ax = ovm.plot_param_importances(study)
            save_figure_atomic(ax.figure, study_dir / "importances.png")
            written["importances.png"] = "parameter importances (fANOVA)"
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. every trial had the same values
            written["importance_note"] = f"parameter importances not computed: {exc}"
    return written


def write_study_report(study: optuna.Study, study_dir: Path) -> Path:
    rows = trial_rows(study)
    write_text_atomic(study_dir / "trials.csv", to_csv(rows))
    write_text_atomic(study_dir / "trials.md", to_markdown(rows))
    best_yaml = best_config_yaml(study, study_dir)
    if best_yaml:
        write_text_atomic(study_dir / "best_config.yaml", best_yaml)
    plots = write_plots(study, study_dir)
    states = {s: sum(r["state"] == s for r in rows) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    metric = study.user_attrs.get("metric", "objective")
    lines = [f"# Study {study.study_name}", "",
             f"Objective: {study.direction.name.lower()} `{metric}`. Trials: {len(rows)} "
             f"({', '.join(f'{n} {s.lower()}' for s, n in states.items() if n)}).", ""]
    if best_yaml:
        b = study.best_trial
        lines += [f"Best: trial {b.number}, {metric} = {b.value:.6g}, params `{json.dumps(b.params)}`.", "",
                  f"Run it: `tuneforge train {study_dir / 'best_config.yaml'}`", ""]
    else:
        lines += ["No trial completed, so there is no best config.", ""]
    for name, text in plots.items():
        lines += [f"![{text}]({name})" if name.endswith(".png") else f"_{text}_", ""]
    lines += ["## Trials", "", to_markdown(rows)]
    write_text_atomic(study_dir / "report.md", "\n".join(lines))
    return study_dir / "report.md"
