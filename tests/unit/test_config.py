"""Config: typed schema, YAML line numbers, did-you-mean, dotted overrides."""

import pytest

from tuneforge.config.checks import check_config
from tuneforge.config.load import load_config
from tuneforge.errors import ConfigError

BASE = """\
model: smollm2-135m-instruct
stage: sft
data:
  train: train.jsonl
training:
  learning_rate: 1.0e-4
output_dir: runs/x
"""


def _cfg(tmp_path, text=BASE):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_loads_with_defaults(tmp_path):
    cfg = load_config(_cfg(tmp_path))
    assert cfg.method.name == "lora" and cfg.method.target_modules is None  # None: the architecture's default
    assert cfg.training.learning_rate == 1e-4 and cfg.training.precision == "auto"


def test_unknown_key_did_you_mean_with_line(tmp_path):
    p = _cfg(tmp_path, BASE.replace("learning_rate", "learnin_rate"))
    with pytest.raises(ConfigError,
                       match=r"c\.yaml:6: unknown key 'training.learnin_rate'; did you mean 'training.learning_rate'"):
        load_config(p)


def test_unknown_top_level_key(tmp_path):
    with pytest.raises(ConfigError, match=r"c\.yaml:8: unknown key 'seeed'; did you mean 'seed'"):
        load_config(_cfg(tmp_path, BASE + "seeed: 1\n"))


def test_wrong_type_and_missing_key(tmp_path):
    with pytest.raises(ConfigError, match=r"key 'training.learning_rate'.*got 'fast'"):
        load_config(_cfg(tmp_path), ["training.learning_rate=fast"])
    with pytest.raises(ConfigError, match="missing required key 'output_dir'"):
        load_config(_cfg(tmp_path, BASE.replace("output_dir: runs/x\n", "")))


def test_overrides_are_typed(tmp_path):
    cfg = load_config(_cfg(tmp_path), ["training.max_steps=10", "training.learning_rate=3e-4",
                                       "method.target_modules=all-linear", "seed=7"])
    assert cfg.training.max_steps == 10 and cfg.training.learning_rate == 3e-4
    assert cfg.method.target_modules == "all-linear" and cfg.seed == 7


def test_bad_override_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_config(_cfg(tmp_path), ["training.max_steps"])
    with pytest.raises(ConfigError, match=r"c\.yaml:2: not valid YAML"):
        load_config(_cfg(tmp_path, "model: [x\nstage: sft\n"))


def test_unsupported_method_and_split_policy(tmp_path):
    with pytest.raises(ConfigError, match=r"key 'method.name': expected one of full, freeze, lora.*got 'ful'"):
        load_config(_cfg(tmp_path), ["method.name=ful"])
    cfg = load_config(_cfg(tmp_path), ["training.overlength=split"])
    with pytest.raises(ConfigError, match="'split' is for the pretrain stage"):
        check_config(cfg)


def test_method_keys_are_checked_per_method(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'method.r'.*allowed here: name, num_virtual_tokens"):
        load_config(_cfg(tmp_path), ["method.name=prompt", "method.r=8"])
    cfg = load_config(_cfg(tmp_path), ["method.name=freeze", "method.last_n_layers=3"])
    assert cfg.method.name == "freeze" and cfg.method.last_n_layers == 3
