"""dpo and non-finite numbers: a NaN step is skipped (weights and optimizer moments unchanged), too many in a row
stop the stage with nothing saved, and weights that became non-finite are never saved (the skeleton's finish)."""

import math

import pytest
import torch
from test_dpo import LORA, make_dpo_config, setup, trainer_for
from transformers import TrainerCallback

from tuneforge.errors import NonFiniteLoss
from tuneforge.methods import METHODS, MethodContext
from tuneforge.stages import dpo
from tuneforge.train import hf_bridge


@pytest.fixture
def dpo_config(make_config, tmp_path):
    return make_dpo_config(make_config, tmp_path)


ORIGINAL_TRAINER = dpo._trainer_class


def poisoned(steps: set[int]):
    """A trainer class whose loss is NaN on the given optimizer steps (1-based)."""

    def factory():
        class Poisoned(ORIGINAL_TRAINER()):
            def compute_loss(self, model, inputs, *args, **kwargs):
                loss = super().compute_loss(model, inputs, *args, **kwargs)
                return loss * float("nan") if self.state.global_step + 1 in steps else loss

        return Poisoned

    return factory


def test_nonfinite_step_is_skipped(dpo_config, tmp_path, monkeypatch):
    monkeypatch.setattr(dpo, "_trainer_class", poisoned({3}))
    cfg = dpo_config(method=LORA, training__max_steps=5)
    tok, train, _, model = setup(cfg, tmp_path)
    model = METHODS["lora"].apply(model, cfg.method, MethodContext(cfg.model))
    seen = []

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})

    trainer, guard = trainer_for(cfg, model, tok, train, tmp_path, Snapshot())
    with pytest.warns(UserWarning, match="step 3: non-finite"):
        trainer.train()
    guard.raise_if_stopped()  # one bad step: no stop
    assert guard.skipped == [3] and trainer.state.global_step == 5
    same = [all(torch.equal(a[n], b[n]) for n in a) for a, b in zip(seen, seen[1:], strict=False)]
    assert same == [False, True, False, False]  # step 3 changed nothing (weights and moments)
    assert all(torch.isfinite(p).all() for p in seen[-1].values())
    history = hf_bridge.history_of(trainer)
    assert math.isnan(history[2]["loss"]) and all(math.isfinite(h["loss"]) for h in history[3:])


def test_nonfinite_steps_stop_the_stage_with_nothing_saved(dpo_config, tmp_path, monkeypatch):
    monkeypatch.setattr(dpo, "_trainer_class", poisoned(set(range(1, 10))))
    cfg = dpo_config(method=LORA, training__max_steps=8, training__max_bad_steps=3)
    with pytest.warns(UserWarning), pytest.raises(NonFiniteLoss, match="3 non-finite steps"):
        dpo.run(cfg)
    out = tmp_path / "run"
    assert not (out / "adapter_model.safetensors").exists() and not (out / "metrics.json").exists()


def test_non_finite_weights_are_never_saved(dpo_config, tmp_path, monkeypatch):
    """The skeleton's finish checks the weights before saving, for dpo as for the loop's stages: weights that
    became non-finite outside a step the guard could skip are refused, and nothing of the run is written."""

    def factory():
        class PoisonedAtEnd(ORIGINAL_TRAINER()):
            def train(self, *args, **kwargs):
                result = super().train(*args, **kwargs)
                with torch.no_grad():
                    next(p for p in self.model.parameters() if p.requires_grad).fill_(float("inf"))
                return result

        return PoisonedAtEnd

    monkeypatch.setattr(dpo, "_trainer_class", factory)
    cfg = dpo_config(method=LORA, training__max_steps=2, data__eval=None)
    with pytest.raises(NonFiniteLoss, match="non-finite"):
        dpo.run(cfg)
    out = tmp_path / "run"
    assert not (out / "adapter_model.safetensors").exists() and not (out / "metrics.json").exists()
