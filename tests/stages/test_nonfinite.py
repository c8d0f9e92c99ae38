"""A non-finite loss is visible, its update is skipped, and training stops after max_bad_steps
without saving non-finite weights."""

import pytest
import torch

import tuneforge.train.loop as loop
from tuneforge.data.dataset import load_examples
from tuneforge.errors import NonFiniteLoss
from tuneforge.methods import METHODS, MethodContext
from tuneforge.models import load_model, load_tokenizer
from tuneforge.train.loop import train


def _setup(make_config, **overrides):
    cfg = make_config(**overrides)
    tok = load_tokenizer(cfg.model)
    examples, _ = load_examples(cfg, tok, cfg.data.train)
    model = METHODS["lora"].apply(load_model(cfg.model), cfg.method, MethodContext(cfg.model))
    return cfg, model, examples


def _poison(monkeypatch, bad_calls):
    real, calls = loop.loss_sum, []

    def loss_sum(model, batch):
        calls.append(1)
        loss = real(model, batch)
        return loss * float("nan") if len(calls) in bad_calls else loss

    monkeypatch.setattr(loop, "loss_sum", loss_sum)


def test_nonfinite_step_is_skipped_and_training_continues(make_config, tmp_path, monkeypatch):
    cfg, model, examples = _setup(make_config, training__max_steps=6, training__max_grad_norm=None)
    _poison(monkeypatch, {3})
    lora = {n: p for n, p in model.named_parameters() if p.requires_grad}
    snapshots = []
    real_step = torch.optim.AdamW.step

    def step_and_snapshot(self, *a, **k):
        out = real_step(self, *a, **k)
        snapshots.append({n: p.detach().clone() for n, p in lora.items()})
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step_and_snapshot)
    with pytest.warns(UserWarning, match="step 3: non-finite"):
        result = train(model, examples, [], cfg, tmp_path / "run", "fp32")
    assert len(snapshots) == 5  # 6 steps, the poisoned one made no update
    assert [h["step"] for h in result.history] == [1, 2, 4, 5, 6]
    assert all(torch.isfinite(p).all() for p in lora.values())


def test_too_many_nonfinite_steps_stop_without_saving(make_config, tmp_path, monkeypatch):
    cfg, model, examples = _setup(make_config, training__max_steps=10, training__max_bad_steps=3, training__save_steps=1)
    _poison(monkeypatch, {3, 4, 5})
    with pytest.warns(UserWarning), pytest.raises(NonFiniteLoss, match="3 non-finite steps in a row"):
        train(model, examples, [], cfg, tmp_path / "run", "fp32")
    saved = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert saved == ["step-0000001", "step-0000002"]  # only the finite steps before the run of bad ones
