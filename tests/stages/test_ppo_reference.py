"""The PPO reference is the initial policy, whatever the adapter's initialisation: with LoRA's PiSSA init the
adapter-disabled model is the residual, so a reference taken as `disable_adapter()` measured the KL penalty, the
KL stop and the reported KL against the wrong model (issue 14)."""

from __future__ import annotations

import json

import pytest
import torch
from test_ppo import _log, make_ppo_config

from tuneforge.models import load_model, load_tokenizer
from tuneforge.stages import STAGES, skeleton
from tuneforge.stages import ppo as ppo_stage


@pytest.fixture
def ppo_config(make_config, tmp_path):
    return make_ppo_config(make_config, tmp_path)


PISSA = {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear", "init": "pissa"}


def test_pissa_reference_is_the_base_not_the_residual(ppo_config, tiny_model_dir):
    """LoRA with PiSSA init moves the top singular directions of each weight into the adapter, so the policy
    with its adapter disabled is the residual, not the base. The reference (KL penalty, KL stop, reported KL)
    must be the initial policy, i.e. the base."""
    cfg = ppo_config(method=PISSA, training__max_steps=1, training__learning_rate=1e-4)
    run = skeleton.begin(cfg, lambda _m: None)
    policy, _ = ppo_stage.load_policy(run)
    ids = load_tokenizer(str(tiny_model_dir))("what color is the sky", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        base = load_model(str(tiny_model_dir))(ids).logits
        with policy.reference():
            reference = policy.model(ids).logits
        with policy.model.disable_adapter():
            residual = policy.model(ids).logits
    assert torch.allclose(reference, base, atol=1e-4)
    assert (residual - base).abs().max() > 1e-2  # the case matters: the residual scores differently

    out = STAGES["ppo"](cfg)  # through the stage: before any update the policy is its reference
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_before"]["kl_mean"] == pytest.approx(0.0, abs=1e-3)
    (record,) = _log(out)  # rollout 1 is sampled from the initial policy: its KL to the reference is ~0
    assert record["kl_mean"] == pytest.approx(0.0, abs=1e-3) and metrics["stopped_early"] is None
