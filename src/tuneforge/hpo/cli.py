"""`tuneforge hpo`: an Optuna study over dotted config keys, resumable from its storage; see tuneforge.hpo.study.

    tuneforge hpo examples/quickstart.yaml --space examples/hpo/space.yaml --trials 8 --output runs/hpo
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_hpo(args: argparse.Namespace) -> int:
    from tuneforge.config.load import load_config
    from tuneforge.device import device_overrides, resolve_device
    from tuneforge.hpo.report import write_study_report
    from tuneforge.hpo.study import run_study

    overrides = device_overrides(args.device, args.overrides)  # every trial trains there
    cfg = load_config(args.config, overrides)
    resolve_device(cfg.training.device)  # a device this machine lacks: exit 2 before the study starts
    study_dir = Path(args.output or f"{cfg.output_dir}-hpo")
    study = run_study(args.config, args.space, args.trials, study_dir, overrides=overrides,
                      storage=args.storage, study_name=args.study_name, metric=args.metric,
                      direction=args.direction, sampler=args.sampler, prune=not args.no_prune, seed=args.seed,
                      log=lambda msg: print(msg, file=sys.stderr))
    report = write_study_report(study, study_dir)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    best = f"; best {args.metric} = {study.best_value:.6g} (trial {study.best_trial.number})" if done else ""
    print(f"study {study.study_name!r}: {len(study.trials)} trials{best}; wrote {report}, best_config.yaml, "
          "trials.md/.csv")
    return 0 if done else 1


def register(sub) -> None:
    text = "search hyper-parameters with Optuna: any config key, pruned on eval results, resumable"
    p = sub.add_parser("hpo", help=text, description=text)
    p.add_argument("config", help="base YAML config")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides applied to every trial")
    p.add_argument("--space", required=True, help="YAML: dotted key -> {type, low, high, log, step} or a list")
    p.add_argument("--trials", type=int, default=10, help="trials to add in this call (default 10)")
    p.add_argument("--output", help="study dir (trials/, report.md, ...); default OUTPUT_DIR-hpo")
    p.add_argument("--storage", help="Optuna RDB URL shared by workers; default sqlite:///STUDY_DIR/study.db")
    p.add_argument("--study-name", help="default: the config's file name")
    p.add_argument("--metric", default="eval_loss", help="eval_after key to optimise: eval_loss, exact_match, "
                   "accuracy, macro_f1, ... (default eval_loss)")
    p.add_argument("--direction", choices=["minimize", "maximize"], help="default: minimize for *loss, else maximize")
    p.add_argument("--sampler", choices=["tpe", "random", "grid"], default="tpe",
                   help="grid tries every combination of list-valued keys once")
    p.add_argument("--no-prune", action="store_true", help="no MedianPruner on intermediate eval results")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps for every trial (default: training.device)")
    p.add_argument("--seed", type=int, help="sampler seed (default: none, so workers sample differently)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(fn=cmd_hpo)
