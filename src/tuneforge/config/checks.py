"""Cross-key checks that the schema cannot express, run before anything loads or is written: the method x
stage table, the stage's own constraints (from stage_info), optional packages a key needs.

    check_config(cfg)      # ConfigError (exit 2) naming the key and what is allowed
"""

from __future__ import annotations

import importlib.util
import os

from tuneforge.config.schema import Config
from tuneforge.errors import ConfigError
from tuneforge.methods import check_compat
from tuneforge.stage_info import stage_info
from tuneforge.train.compile import check_compile
from tuneforge.train.zero import check_deepspeed, not_wired


def check_config(cfg: Config) -> None:
    info = stage_info(cfg.stage)
    check_compat(cfg.method.name, cfg.stage)
    if "mlflow" in cfg.training.report_to and importlib.util.find_spec("mlflow") is None:
        raise ConfigError("key 'training.report_to': mlflow is not installed; pip install 'tuneforge[mlflow]'")
    if info.records != "pretrain" and cfg.training.overlength == "split":
        raise ConfigError("key 'training.overlength': 'split' is for the pretrain stage; use truncate, drop or error")
    for key in ("train", "eval"):  # several sources: the lm stages (their examples come from data.token_cache)
        value = getattr(cfg.data, key)
        if isinstance(value, list) and (info.examples != "lm" or not value):
            raise ConfigError(f"key 'data.{key}': a list of sources is for sft and pretrain (and needs at least "
                              f"one); stage {cfg.stage!r} takes one file")
    if isinstance(cfg.data.train, list) and cfg.data.eval_split > 0 and not cfg.data.eval:
        raise ConfigError("key 'data.eval_split': with several train sources, give data.eval instead")
    if not info.distributed and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(f"stage {cfg.stage!r} runs in one process; run it without --nproc / torchrun")
    check_compile(cfg)
    check_deepspeed(cfg.training, cfg.stage, cfg.method.name)
    if cfg.training.distributed == "deepspeed" and (refused := not_wired(cfg.training, cfg.method.name)):
        raise refused
