"""PPO: the math against hand-computed numbers, and the stage on the tiny Llama with a toy reward (digits
in the completion): the reward rises while KL stays bounded, only the adapter and value head train, a KL
runaway stops the run, a resumed run repeats the uninterrupted one, and the saved run reloads. A signal in the
middle of a rollout: test_ppo_signals.py; the reference of a PiSSA adapter: test_ppo_reference.py."""

from __future__ import annotations

import json
import math
import os
import re
import signal

import pytest
import torch
from safetensors.torch import load_file

import tiny
from tuneforge.data.dataset import load_train_eval_records
from tuneforge.errors import ConfigError, NonFiniteLoss, TrainingInterrupted
from tuneforge.rl import ppo_math as pm
from tuneforge.rl.policy_eval import evaluate_policy
from tuneforge.rl.prompts import load_prompt_examples
from tuneforge.rl.rewards import load_rewards
from tuneforge.runs import load_run
from tuneforge.stages import STAGES

PROMPTS = ["say hello", "what color is the sky", "name a fish", "one two three", "what is the capital of france",
           "hi there", "say yes or no", "count to five"]


def digits(prompts, completions, **_):
    """The toy reward: half a point per digit emitted (digits are single tokens of the tiny vocabulary)."""
    return [len(re.findall(r"\d", c)) / 2 for c in completions]


@pytest.fixture
def ppo_config(make_config, tmp_path):
    return make_ppo_config(make_config, tmp_path)


def make_ppo_config(make_config, tmp_path):
    """A config factory: the tiny model on PROMPTS (train and eval), rewarded by `digits`, overrides on top."""
    path = tiny.write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])

    def make(ppo=None, **overrides):
        block = {"rewards": [{"function": "test_ppo:digits"}], "max_new_tokens": 6, "minibatch_size": 4, **(ppo or {})}
        return make_config(**{"stage": "ppo", "ppo": block, "data__train": str(path), "data__eval": str(path),
                              "training__batch_size": 8, "training__learning_rate": 3e-3, "training__max_length": 64,
                              "training__report_to": [], **overrides})

    return make


# ---- the math, against numbers worked out by hand ----

def test_gae_matches_hand_computation():
    rewards = torch.tensor([[1.0, 0.0, 2.0], [0.5, 9.0, 9.0]])
    values = torch.tensor([[0.5, 1.0, 1.5], [0.2, 7.0, 7.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])  # row 2: one token, then padding
    advantages, returns = pm.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # row 1: deltas 0.5 (t=2), 0 + 0.9*1.5 - 1 = 0.35, 1 + 0.9*1 - 0.5 = 1.4; A = delta + 0.72 A_next
    want = torch.tensor([[1.4 + 0.72 * (0.35 + 0.72 * 0.5), 0.35 + 0.72 * 0.5, 0.5], [0.3, 0.0, 0.0]])
    assert torch.allclose(advantages, want, atol=1e-6)
    assert torch.allclose(returns, torch.tensor([[want[0, 0] + 0.5, 1.71, 2.0], [0.5, 0.0, 0.0]]), atol=1e-6)


def test_token_rewards_put_the_score_on_the_last_real_token():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -9.0, -9.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-1.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    rewards, kl = pm.token_rewards(logp, ref, torch.tensor([10.0, 20.0]), mask, kl_coef=0.1)
    assert torch.allclose(rewards, torch.tensor([[-0.05, 0.0, 10.1], [19.95, 0.0, 0.0]]))
    assert torch.allclose(kl, torch.tensor([-0.5, 0.5]))


def test_clipped_policy_loss_matches_hand_numbers():
    ratios = torch.tensor([[1.5, 0.5, 1.0, 1.1, 50.0]])
    logp_old = torch.full((1, 5), -2.0)
    advantages = torch.tensor([[1.0, 1.0, -1.0, -2.0, 3.0]])
    mask = torch.tensor([[True, True, True, True, False]])  # the last token is padding: ignored
    loss, stats = pm.policy_loss(logp_old + ratios.log(), logp_old, advantages, mask, clip_range=0.2)
    # per token max(-A r, -A clip(r)): -1.2 (clipped wins), -0.5, 1.0, 2.2
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.0 + 2.2) / 4, abs=1e-6)
    assert stats["clip_fraction"] == pytest.approx(0.25)
    logs = [math.log(1.5), math.log(0.5), 0.0, math.log(1.1)]
    assert stats["approx_kl"] == pytest.approx(0.5 * sum(x * x for x in logs) / 4, abs=1e-6)


def test_clipped_value_loss_matches_hand_numbers():
    old, new = torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([[1.5, 0.9, 0.1]])
    returns, mask = torch.tensor([[2.0, 0.0, 0.1]]), torch.ones(1, 3, dtype=torch.bool)
    loss, stats = pm.value_loss(new, old, returns, mask, clip_range_value=0.2)
    # token 1: max((1.5-2)^2, (1.2-2)^2) = 0.64 (clipped); token 2: 0.81; token 3: 0
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.81) / 3, abs=1e-6)
    assert stats["value_clip_fraction"] == pytest.approx(1 / 3)


def test_whiten_ignores_padding():
    x, mask = torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[True, True, True, False]])
    w = pm.whiten(x, mask)
    assert torch.allclose(w, torch.tensor([[-1.0, 0.0, 1.0, 0.0]]), atol=1e-6)  # unbiased std of 1, 2, 3 is 1


def test_adaptive_kl_controller_moves_toward_target():
    ctl = pm.KLController(coef=0.1, target=6.0, horizon=100)
    assert ctl.update(kl=12.0, n=10) == pytest.approx(0.1 * 1.02)  # error clipped to +0.2, times 10/100
    assert ctl.update(kl=3.0, n=10) == pytest.approx(0.1 * 1.02 * 0.98)  # -0.5 clipped to -0.2
    assert ctl.update(kl=6.6, n=10) == pytest.approx(0.1 * 1.02 * 0.98 * 1.01)
    coef, kl = 0.01, 20.0  # a toy world where KL falls as the penalty rises: the coefficient climbs until KL ~ target
    ctl = pm.KLController(coef=coef, target=6.0, horizon=50)
    for _ in range(400):
        kl = 0.2 / ctl.update(kl, n=8)
    assert kl == pytest.approx(6.0, rel=0.05)
    fixed = pm.KLController(coef=0.1, target=6.0, horizon=100, adaptive=False)
    assert fixed.update(kl=50.0, n=10) == 0.1


def test_value_head_starts_at_zero_and_learns():
    head = pm.ValueHead(8)
    hidden = torch.randn(2, 3, 8)
    assert head(hidden).shape == (2, 3) and head(hidden).abs().max() == 0
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    target = torch.ones(2, 3)
    for _ in range(50):
        loss = ((head(hidden) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


# ---- the stage ----

def _log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_ppo_raises_reward_with_bounded_kl_and_reloads(ppo_config):
    cfg = ppo_config(ppo={"target_kl": 4.0, "kl_horizon": 200}, training__max_steps=24, training__save_steps=12)
    out = STAGES["ppo"](cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    before, after = metrics["eval_before"], metrics["eval_after"]
    assert before["kl_mean"] == pytest.approx(0.0, abs=1e-5)  # the adapter starts as the identity
    assert after["reward_mean"] > before["reward_mean"] + 0.4, (before, after)
    assert 0.0 < after["kl_mean"] < 30.0 and metrics["stopped_early"] is None
    history = _log(out)
    assert len(history) == 24 and all(math.isfinite(h["loss"]) and math.isfinite(h["value_loss"]) for h in history)
    first, last = history[:5], history[-5:]
    assert sum(h["reward_mean"] for h in last) > sum(h["reward_mean"] for h in first) + 2.0
    for h in history:  # the adaptive coefficient moves toward the target
        assert (h["kl_coef_next"] > h["kl_coef"]) == (h["kl_mean"] > 4.0)
    assert {"clip_fraction", "approx_kl", "entropy", "policy_loss", "length_mean"} <= set(history[0])
    assert metrics["train"]["tokens_generated"] == sum(h["tokens_generated"] for h in history) > 0
    assert (out / "rollouts.png").is_file() and "## PPO" in (out / "report.md").read_text()

    # only the adapter and the value head trained; the final checkpoint equals what was saved
    final = load_file(str(out / "checkpoints" / "step-0000024" / "trainable.safetensors"))
    assert set(final) == {n for n in final if "lora_" in n or n.startswith("value_head.")}
    head = pm.load_value_head(out)
    assert torch.equal(head.summary.weight, final["value_head.summary.weight"]) and head.summary.weight.abs().sum() > 0
    assert any(n.endswith("lora_B.default.weight") and v.abs().sum() > 0 for n, v in final.items())  # it moved
    model, tokenizer, run_cfg = load_run(out)
    assert all(torch.equal(q, final[f"model.{n}"]) for n, q in model.named_parameters() if "lora_" in n)

    # the reloaded run (the base from disk + the saved adapter) samples, scores and measures KL exactly as the
    # trained policy did at the end: the base stayed frozen in training and the adapter saved is the one trained
    examples, _ = load_prompt_examples(run_cfg, tokenizer, load_train_eval_records(run_cfg, log=lambda _m: None)[1])
    again = evaluate_policy(model, tokenizer, examples, load_rewards(run_cfg.ppo.rewards, "ppo.rewards"), run_cfg.ppo,
                            reference=model.disable_adapter, seed=run_cfg.seed, batch_size=8, precision="fp32")
    assert again["samples"] == [{k: s[k] for k in ("prompt", "completion", "reward")}
                                for s in map(json.loads, (out / "samples.jsonl").read_text().splitlines())
                                if s["when"] == "after"]
    assert again["kl_mean"] == pytest.approx(after["kl_mean"], abs=1e-4)


def test_kl_runaway_stops_early_and_undoes_the_update(ppo_config):
    cfg = ppo_config(ppo={"max_kl": 1e-6}, training__max_steps=8, training__save_steps=1, data__eval=None,
                     eval__before=False)
    with pytest.warns(UserWarning, match=r"rollout \d+: mean KL .* > ppo.max_kl 1e-06; stopped"):
        out = STAGES["ppo"](cfg)
    stopped = json.loads((out / "metrics.json").read_text())["stopped_early"]
    history = _log(out)
    assert stopped["kl_mean"] > 1e-6 and stopped["rollout"] == len(history) + 1 >= 2  # rollout 1: the identity, KL 0
    assert history[-1]["reverted"] and stopped["updates_kept"] == len(history) - 1
    adapter = load_file(str(out / "adapter_model.safetensors"))
    if stopped["updates_kept"] == 0:  # back to the initial adapter
        assert all(v.abs().sum() == 0 for n, v in adapter.items() if "lora_B" in n)
    else:  # back to the weights after the last kept update
        kept = load_file(str(out / "checkpoints" / f"step-{stopped['updates_kept']:07d}" / "trainable.safetensors"))
        assert all(torch.equal(v, kept[f"model.{n.replace('.weight', '.default.weight')}"]) for n, v in adapter.items())


def _same_run(straight, resumed) -> None:
    """A resumed run's rollouts and saved adapter equal the uninterrupted run's."""
    keys = ("reward_mean", "kl_mean", "kl_coef", "loss", "value_loss", "clip_fraction")
    assert [[h[k] for k in keys] for h in _log(resumed)] == [[h[k] for k in keys] for h in _log(straight)]
    a, b = (load_file(str(d / "adapter_model.safetensors")) for d in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_signal_equals_uninterrupted(ppo_config, tmp_path):
    def kwargs(name, **extra):
        return dict(ppo={"kl_horizon": 50}, training__max_steps=4, training__save_steps=2, data__eval=None,
                    output_dir=str(tmp_path / name), **extra)

    straight = STAGES["ppo"](ppo_config(**kwargs("straight")))

    def signal_at_3(step, _record):  # after rollout 3, between checkpoints
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted) as info:
        STAGES["ppo"](ppo_config(**kwargs("resumed")), on_eval=signal_at_3)
    assert info.value.checkpoint.endswith("step-0000003")
    resumed = STAGES["ppo"](ppo_config(**kwargs("resumed"), resume="auto"))
    _same_run(straight, resumed)
    assert _log(straight)[-1]["kl_coef"] != _log(straight)[0]["kl_coef"]  # the controller state mattered
    assert json.loads((resumed / "metrics.json").read_text())["train"]["resumed_from"].endswith("step-0000003")
    with pytest.raises(ConfigError, match="resume_allow_changes"):  # another seed would not continue this run
        STAGES["ppo"](ppo_config(**kwargs("resumed"), resume="auto", seed=1))


def test_dropout_is_off_so_the_first_ratio_is_one(ppo_config):
    cfg = ppo_config(ppo={"ppo_epochs": 1, "minibatch_size": 8}, method__dropout=0.5, training__max_steps=1,
                     data__eval=None, eval__before=False)
    (record,) = _log(STAGES["ppo"](cfg))  # one update, taken at the rollout's own weights
    assert record["clip_fraction"] == 0.0 and record["approx_kl"] < 1e-10 and record["loss"] != 0.0


def test_non_finite_updates_are_skipped_then_stop(ppo_config, tmp_path, monkeypatch):
    real, calls = pm.value_loss, []

    def nan_once(values, *args, **kw):
        calls.append(1)
        loss, stats = real(values, *args, **kw)
        return (loss * float("nan") if len(calls) == 2 else loss), stats

    monkeypatch.setattr(pm, "value_loss", nan_once)
    common = {"training__max_steps": 2, "data__eval": None, "eval__before": False}
    with pytest.warns(UserWarning, match="rollout 1: non-finite loss/gradient"):
        out = STAGES["ppo"](ppo_config(**common, output_dir=str(tmp_path / "skips")))
    assert [h["skipped_updates"] for h in _log(out)] == [1, 0]  # 2 epochs x 2 minibatches: one of 4 skipped
    assert [s["step"] for s in json.loads((out / "metrics.json").read_text())["train"]["skipped_steps"]] == [1]
    assert all(torch.isfinite(v).all() for v in load_file(str(out / "adapter_model.safetensors")).values())
    calls.clear()
    with pytest.raises(NonFiniteLoss, match="training.max_bad_steps"):
        STAGES["ppo"](ppo_config(**common, training__max_bad_steps=1, output_dir=str(tmp_path / "stops")))
    assert not (tmp_path / "stops" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize(("override", "match"), [
    ({"training__grad_accum": 2}, "training.grad_accum"),
    ({"method": {"name": "full"}}, "does not support stage 'ppo'"),
    ({"ppo": {"rewards": [{"function": "test_ppo:no_such_fn"}]}}, r"ppo.rewards\[0\].*no function"),
])
def test_bad_config_fails_before_writing(ppo_config, tmp_path, override, match):
    cfg = ppo_config(**override)
    with pytest.raises(ConfigError, match=match):
        STAGES["ppo"](cfg)
    assert not (tmp_path / "run").exists()

