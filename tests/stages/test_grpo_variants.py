"""grpo.loss_type and grpo.scale_rewards: every choice reaches TRL's GRPOConfig, the schema offers exactly the loss
types TRL 1.16 documents, old boolean scale_rewards keep their meaning, a bad value exits 2 naming the key and the
allowed values, and a variant trains end to end on the tiny model."""

from __future__ import annotations

import dataclasses
import json
import re
import typing

import pytest
import yaml
from trl import GRPOConfig

import tiny
from tuneforge.config.load import dump_config
from tuneforge.config.schema import GrpoConfig
from tuneforge.stages import grpo

LOSS_TYPES = typing.get_args(GrpoConfig.model_fields["loss_type"].annotation)
REWARD = {"function": "tuneforge.rl.rewards:length_penalty", "kwargs": {"target": 4, "per_unit": 0.1}}


@pytest.fixture
def grpo_config(make_config, tmp_path):
    rows = [{"prompt": q} for q in ("say hi", "name a fish", "say yes", "what is one and two ?")]
    train = tiny.write_jsonl(tmp_path / "prompts.jsonl", rows)

    def make(**block):
        return make_config(stage="grpo", data__train=str(train), data__eval=str(train), training__max_steps=2,
                           training__batch_size=2, training__max_length=64,
                           grpo={"rewards": [REWARD], "num_generations": 2, "max_new_tokens": 6, **block})

    return make


def test_loss_types_are_trls():
    """The schema offers the loss types TRL's GRPOConfig documents (its help text lists them)."""
    help_text = next(f for f in dataclasses.fields(GRPOConfig) if f.name == "loss_type").metadata["help"]
    listed = re.search(r"Supported values are (.*?)\. ", help_text).group(1)
    assert set(LOSS_TYPES) == set(re.findall(r"'(\w+)'", listed))
    assert GrpoConfig.model_fields["loss_type"].default == "dapo"  # TRL's default: runs made before keep their loss


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_each_loss_type_reaches_grpo_config(loss_type, grpo_config, tmp_path):
    args = grpo.to_grpo_config(grpo_config(loss_type=loss_type), tmp_path, "fp32")
    assert args.loss_type == loss_type
    assert args.importance_sampling_level == ("sequence" if loss_type == "luspo" else "token")


@pytest.mark.parametrize("given,expected", [(True, "group"), (False, "none"), ("group", "group"),
                                            ("batch", "batch"), ("none", "none")])
def test_scale_rewards_reaches_grpo_config(given, expected, grpo_config, tmp_path):
    cfg = grpo_config(scale_rewards=given)
    assert cfg.grpo.scale_rewards == expected
    assert grpo.to_grpo_config(cfg, tmp_path, "fp32").scale_rewards == expected
    assert yaml.safe_load(dump_config(cfg))["grpo"]["scale_rewards"] == expected  # the saved config.yaml


def test_defaults_are_trls_defaults(grpo_config, tmp_path):
    args = grpo.to_grpo_config(grpo_config(), tmp_path, "fp32")
    assert (args.loss_type, args.scale_rewards) == ("dapo", "group")


@pytest.mark.parametrize("key,value,allowed", [
    ("loss_type", "ppo", "'grpo', 'dr_grpo', 'dapo', 'bnpo', 'cispo', 'sapo', 'luspo' or 'vespo'"),
    ("scale_rewards", "std", "'group', 'batch' or 'none'"),
    ("scale_rewards", 1.5, "'group', 'batch' or 'none'"),
])
def test_bad_value_is_a_config_error(key, value, allowed, grpo_config, tmp_path, capsys):
    from tuneforge.cli import main
    from tuneforge.config.load import load_config
    from tuneforge.errors import ConfigError

    raw = yaml.safe_load(dump_config(grpo_config()))
    raw["grpo"][key] = value
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=f"grpo.{key}"):
        load_config(path)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"key 'grpo.{key}'" in err and allowed in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("loss_type,scale_rewards", [("dr_grpo", "none"), ("bnpo", "batch")])
def test_a_variant_trains_end_to_end(loss_type, scale_rewards, grpo_config, tmp_path):
    cfg = grpo_config(loss_type=loss_type, scale_rewards=scale_rewards)
    out = grpo.run(cfg, log=lambda _m: None)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 2 and metrics["eval_after"]["reward_mean"] <= 0
    saved = yaml.safe_load((out / "config.yaml").read_text())["grpo"]
    assert (saved["loss_type"], saved["scale_rewards"]) == (loss_type, scale_rewards)
