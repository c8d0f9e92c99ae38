"""Issue 21 item 8: PPO stops within one generation step of a signal (or one minibatch update, undone), not
after the whole rollout, checkpoints the last finished rollout and resumes exactly. The signal is sent by the
run itself, from a forward hook at a chosen forward pass: no sleeps, no wall-clock bounds."""

from __future__ import annotations

import collections
import json
import os
import signal

import pytest
import torch
from test_ppo import _same_run, make_ppo_config

from tuneforge.errors import TrainingInterrupted
from tuneforge.rl import ppo_rollout
from tuneforge.stages import STAGES
from tuneforge.stages import ppo as ppo_stage


@pytest.fixture
def ppo_config(make_config, tmp_path):
    return make_ppo_config(make_config, tmp_path)


class ForwardProbe:
    """Counts the causal LM's forward passes by (phase, rollout) of a PPO run, phase "generating" (inside
    rl.ppo_rollout.sample) or "updating" (inside the stage's update_policy), and once armed sends SIGTERM to
    this process at the end of the first forward pass of (phase, rollout); `after` lists every forward pass
    that ran after the signal."""

    def __init__(self, monkeypatch) -> None:
        self.where: tuple[str | None, int] = (None, 0)
        self.counts: collections.Counter = collections.Counter()
        self.armed: tuple[str, int] | None = None
        self.sent, self.after = False, []
        for module, name, phase in ((ppo_rollout, "sample", "generating"), (ppo_stage, "update_policy", "updating")):
            monkeypatch.setattr(module, name, self._in_phase(getattr(module, name), phase))

    def _in_phase(self, fn, phase):
        def wrapped(*args, **kwargs):
            rollout = self.where[1] + (phase == "generating")  # each rollout samples once, then updates
            self.where = (phase, rollout)
            try:
                return fn(*args, **kwargs)
            finally:
                self.where = (None, rollout)

        return wrapped

    def hook(self, module, _args, _output) -> None:
        if type(module).__name__ != "LlamaForCausalLM":
            return
        if self.sent:
            self.after.append(self.where)
            return
        self.counts[self.where] += 1
        if self.where == self.armed and self.counts[self.where] == 1:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)

    def run(self, cfg, armed: tuple[str, int] | None = None):
        self.where, self.counts, self.armed, self.sent, self.after = (None, 0), collections.Counter(), armed, False, []
        handle = torch.nn.modules.module.register_module_forward_hook(self.hook)
        try:
            return STAGES["ppo"](cfg)
        finally:
            handle.remove()


@pytest.mark.parametrize("phase", ["generating", "updating"])
def test_signal_mid_rollout_stops_within_one_forward_pass_and_resumes_exactly(phase, ppo_config, tmp_path,
                                                                              monkeypatch):
    """Issue 21 item 8: a signal during rollout 3's generation (or between its minibatch updates) abandons the
    rollout at once: not one more forward pass (no next token, no scoring, no further update); the updates it
    made are undone (weights and optimizer state), the state after rollout 2 is checkpointed (no periodic save
    here, so the checkpoint is written from memory), and resume=auto replays rollout 3 exactly."""

    def config(name, **extra):
        return ppo_config(ppo={"kl_horizon": 50}, training__max_steps=4, data__eval=None,
                          output_dir=str(tmp_path / name), **extra)

    probe = ForwardProbe(monkeypatch)
    straight = probe.run(config("straight"))
    assert probe.counts[(phase, 3)] >= 2  # where the run would have gone on: more tokens, or more minibatches
    with pytest.raises(TrainingInterrupted) as info:
        probe.run(config("resumed"), armed=(phase, 3))
    assert info.value.signum == signal.SIGTERM and info.value.checkpoint.endswith("step-0000002")
    assert probe.sent and probe.after == []
    assert [p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()] == ["step-0000002"]
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    resumed = STAGES["ppo"](config("resumed", resume="auto"))
    _same_run(straight, resumed)
    assert json.loads((resumed / "metrics.json").read_text())["train"]["resumed_from"].endswith("step-0000002")
