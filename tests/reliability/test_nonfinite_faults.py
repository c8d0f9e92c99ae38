"""NaN / inf injected into the loss, the model's forward pass and a gradient: the step is visible (warning,
TrainResult.skipped_steps, the TensorBoard scalar train/skipped_nonfinite), its update is skipped (weights
and optimizer state bit-identical across it), training stops after training.max_bad_steps in a row (exit 2,
a clear message, the count survives a resume), and no checkpoint or final model with non-finite weights is
ever written."""

import contextlib
import copy
import os
import signal

import pytest
import torch
import yaml
from fault_tools import Runs, frozen, losses, one_thread, trainable

import tuneforge.train.loop as loop
from tuneforge import cli
from tuneforge.errors import NonFiniteLoss, TrainingInterrupted
from tuneforge.train.checkpoint import TrainState, find_resume, list_checkpoints, save_checkpoint


@pytest.fixture
def runs(make_config, tmp_path):
    with one_thread():
        yield Runs(make_config, tmp_path, training__max_steps=6, training__max_grad_norm=None)


def _poison_loss(monkeypatch, bad_calls, value=float("nan")):
    real, calls = loop.loss_sum, []

    def loss_sum(model, batch, *rest):  # rest: the loop's chunked-loss flag
        calls.append(1)
        loss = real(model, batch, *rest)
        return loss * value if len(calls) in bad_calls else loss

    monkeypatch.setattr(loop, "loss_sum", loss_sum)


def _poison_forward(model, bad_calls):  # the first decoder layer's output turns to inf
    calls = []
    layer = next(m for n, m in model.named_modules() if n.endswith("layers.0"))

    def hook(_module, _inputs, output):
        calls.append(1)
        if len(calls) in bad_calls:
            return (output[0] * float("inf"), *output[1:]) if isinstance(output, tuple) else output * float("inf")
        return output

    layer.register_forward_hook(hook)


def _poison_gradient(model, bad_calls):  # one LoRA weight's gradient turns to NaN during backward
    calls = []
    param = next(p for n, p in model.named_parameters() if p.requires_grad)

    def hook(grad):
        calls.append(1)
        return grad * float("nan") if len(calls) in bad_calls else grad

    param.register_hook(hook)


@pytest.mark.parametrize("where", ["loss nan", "loss inf", "forward inf", "gradient nan"])
def test_bad_step_is_logged_and_its_update_skipped(runs, monkeypatch, where):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = copy.deepcopy(runs.base)
    if where.startswith("loss"):
        _poison_loss(monkeypatch, {3}, float(where.split()[1]))
    elif where == "forward inf":
        _poison_forward(model, {3})
    else:
        _poison_gradient(model, {3})
    snapshots = []  # weights and Adam state (moments, step count) before and after each optimizer update
    real_step = torch.optim.AdamW.step

    def snap(opt):
        return trainable(model), [{k: v.clone() for k, v in s.items()} for s in opt.state.values()]

    def step_and_snapshot(self, *a, **k):
        snapshots.append(snap(self))
        out = real_step(self, *a, **k)
        snapshots.append(snap(self))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step_and_snapshot)
    with pytest.warns(UserWarning, match="step 3: non-finite loss/gradient"):
        result, _ = runs.train("run", init=model, training__report_to=["tensorboard"])
    assert [h["step"] for h in result.history] == [1, 2, 4, 5, 6]
    assert [s["step"] for s in result.skipped_steps] == [3]
    assert len(snapshots) == 2 * 5  # 6 steps, the poisoned one made no update
    (weights_2, adam_2), (weights_4, adam_4) = snapshots[3], snapshots[4]  # after step 2, before step 4
    assert all(torch.equal(weights_2[n], weights_4[n]) for n in weights_2)  # bit-identical across the bad step
    assert len(adam_2) == len(adam_4) > 0
    assert all(torch.equal(a[k], b[k]) for a, b in zip(adam_2, adam_4, strict=True) for k in a)
    assert all(torch.isfinite(p).all() for p in trainable(model).values())
    assert all(torch.isfinite(torch.tensor(losses(result)))) and losses(result)[-1] < losses(result)[0]
    assert all(torch.equal(v, frozen(model)[n]) for n, v in frozen(runs.base).items())
    events = EventAccumulator(str(runs.base_dir / "run" / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/skipped_nonfinite")] == [(3, 1.0)]


def test_too_many_bad_steps_stop_with_exit_2_and_save_nothing_nonfinite(runs, monkeypatch, capfd):
    cfg = runs.config("cli", training__max_steps=10, training__max_bad_steps=3, training__save_steps=1,
                      eval__before=False, eval__generate_samples=0)
    path = runs.base_dir / "cli.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    _poison_loss(monkeypatch, {3, 4, 5})
    with pytest.warns(UserWarning, match="non-finite"):
        code = cli.main(["train", str(path)])
    err = capfd.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "3 non-finite steps in a row (steps 3-5, training.max_bad_steps=3)" in err
    assert "no non-finite weights were saved" in err and "step-0000002" in err
    ckpts = runs.base_dir / "cli" / "checkpoints"
    assert [p.name for p in list_checkpoints(ckpts)] == ["step-0000001", "step-0000002"]
    for p in list_checkpoints(ckpts):
        find_resume(str(p), ckpts)  # readable, which includes: every weight finite
    assert not (runs.base_dir / "cli" / "metrics.json").exists()
    assert not list((runs.base_dir / "cli").glob("adapter_model.*"))


def test_bad_steps_apart_do_not_stop_training(runs, monkeypatch):
    _poison_loss(monkeypatch, {2, 4, 6})
    with pytest.warns(UserWarning):
        result, _ = runs.train("run", training__max_bad_steps=2)
    assert [s["step"] for s in result.skipped_steps] == [2, 4, 6] and result.steps == 6


def test_bad_step_count_survives_a_resume(runs, monkeypatch, tally):
    """Steps 3-4 bad, SIGTERM during step 4: the checkpoint says 2 in a row; after resume, step 5 is the 3rd."""
    real, calls = loop.loss_sum, []

    def loss_sum(model, batch, *rest):
        calls.append(1)
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        loss = real(model, batch, *rest)
        return loss * float("nan") if len(calls) in (3, 4) else loss

    monkeypatch.setattr(loop, "loss_sum", loss_sum)
    with pytest.warns(UserWarning), pytest.raises(TrainingInterrupted) as info:
        runs.train("run", training__max_bad_steps=3)
    assert info.value.checkpoint.endswith("step-0000004")
    _poison_loss(monkeypatch, {1})  # the resumed run's first step (step 5) is bad too
    with pytest.warns(UserWarning), pytest.raises(NonFiniteLoss, match="3 non-finite steps in a row .steps 3-5"):
        runs.train("run", training__max_bad_steps=3, resume="auto")
    tally("non-finite steps", resumed=1)


def test_save_checkpoint_refuses_nonfinite_weights(runs):
    model = copy.deepcopy(runs.base)
    next(p for p in model.parameters() if p.requires_grad).data[0] = float("inf")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _s: 1.0)
    root = runs.base_dir / "ckpt"
    with pytest.raises(NonFiniteLoss, match="refusing to save non-finite weights at step 7"):
        save_checkpoint(root, model, opt, sched, TrainState(7, 0, [], 0, 0.0), keep=2)
    assert not root.exists() or not list(root.iterdir())


@pytest.mark.parametrize("save_steps", [2, None])
def test_weights_turned_nonfinite_by_an_update_are_never_saved(runs, monkeypatch, save_steps):
    """An update that overflows (finite gradients, inf weights) at step 4: the step-4 checkpoint is refused,
    or, without checkpoints, train() refuses to hand the model back to be saved."""
    real_step, calls = torch.optim.AdamW.step, []

    def overflowing_step(self, *a, **k):
        out = real_step(self, *a, **k)
        calls.append(1)
        if len(calls) == 4:
            self.param_groups[0]["params"][0].data[0] = float("inf")
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", overflowing_step)
    # without a save at step 4, steps 5-6 see inf weights: skipped (warned), then the end-of-run check stops it
    skipped = pytest.warns(UserWarning, match="non-finite") if save_steps is None else contextlib.nullcontext()
    with skipped, pytest.raises(NonFiniteLoss, match="non-finite"):
        runs.train("run", training__save_steps=save_steps)
    ckpts = runs.base_dir / "run" / "checkpoints"
    assert [p.name for p in list_checkpoints(ckpts)] == (["step-0000002"] if save_steps else [])
    assert not [p for p in ckpts.iterdir() if p.name.startswith(".")] if ckpts.exists() else True


def _hf_run(make_config, tmp_path, bad_steps: set[int]) -> tuple[list[float], int, list[int]]:
    """(learning rate logged at each step, scheduler steps taken, skipped steps) of a 5-step HF Trainer run of
    the tiny model under tuneforge's GuardCallback, the loss NaN on `bad_steps` (the bridge dpo / grpo use)."""
    from transformers import Trainer, TrainingArguments

    from tuneforge.data.templates import build_pretrain_examples
    from tuneforge.models import load_model, load_tokenizer
    from tuneforge.train import hf_bridge

    cfg = make_config(stage="dpo", training__max_steps=5, training__lr_scheduler="linear", training__warmup_ratio=0.0,
                      training__batch_size=2, training__learning_rate=1e-2, training__save_steps=None,
                      output_dir=str(tmp_path / "hf"))
    tok = load_tokenizer(cfg.model)
    rows = [e.input_ids for t in ("the sky is blue .", "the grass is green .", "the sun is yellow .", "hi there")
            for e in build_pretrain_examples(tok, t, 64, split=False)]

    class Poisoned(Trainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            loss = super().compute_loss(model, inputs, *args, **kwargs)
            return loss * float("nan") if self.state.global_step + 1 in bad_steps else loss

    def collate(batch):
        width = max(len(ids) for ids in batch)
        ids = torch.tensor([ids + [tok.pad_token_id] * (width - len(ids)) for ids in batch])
        labels = torch.tensor([ids + [-100] * (width - len(ids)) for ids in batch])
        return {"input_ids": ids, "labels": labels, "attention_mask": (labels != -100).long()}

    torch.manual_seed(0)
    guard = hf_bridge.GuardCallback(cfg.training.max_bad_steps)
    args = TrainingArguments(**hf_bridge.to_trainer_args(cfg, tmp_path / "hf", "fp32"), remove_unused_columns=False)
    trainer = Poisoned(model=load_model(cfg.model), args=args, train_dataset=rows * 4, data_collator=collate,
                       callbacks=[guard])
    trainer.train()
    guard.raise_if_stopped()
    lrs = [h["lr"] for h in hf_bridge.history_of(trainer)]
    return lrs, trainer.lr_scheduler.state_dict()["last_epoch"], guard.skipped


def test_a_skipped_step_on_the_hf_bridge_does_not_advance_the_lr_schedule(make_config, tmp_path):
    """As in tuneforge's loop: the schedule moves with applied updates only, so the steps after a skipped one
    get the learning rates an uninterrupted run gives its steps (here linear decay over 5 steps)."""
    with one_thread():
        clean, clean_epoch, _ = _hf_run(make_config, tmp_path / "clean", set())
        with pytest.warns(UserWarning, match="step 3: non-finite"):
            lrs, epoch, skipped = _hf_run(make_config, tmp_path / "bad", {3})
    assert skipped == [3] and len(lrs) == len(clean) == 5 and len(set(clean)) == 5  # the schedule decays
    assert lrs == [clean[0], clean[1], clean[2], clean[2], clean[3]]  # step 3 left the schedule where it was
    assert (clean_epoch, epoch) == (5, 4)
