"""training.compile keeps parity with the eager fp32 reference (tuneforge/train/compile.py): a few LoRA steps of the
loop on the tiny model, compiled (inductor, dynamic shapes: the packed rows and kept positions vary per step) and
eager, give the same per-step losses and trained LoRA weights (1e-5), leave the frozen weights untouched, save an
adapter that reloads uncompiled to the same outputs, record `compile` in metrics.json; the sharded strategies are
refused with a ConfigError naming the key."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

import tiny
from tuneforge.errors import ConfigError
from tuneforge.train.compile import check_compile

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="inductor's CPU backend needs g++")


def _trained(make_config, tmp_path, compile_: bool):
    """(model after 4 LoRA steps, per-step losses, output dir, train result) with training.compile on or off."""
    cfg = make_config(training__max_steps=4, training__compile=compile_, training__learning_rate=1e-2,
                      output_dir=str(tmp_path / f"run-{compile_}"))
    model, result, out = tiny.train_checked(cfg)
    return model, [h["loss"] for h in result.history], out, result


@pytest.mark.slow  # inductor compiles the tiny model's forward and backward: ~20-40 CPU s cold
def test_compiled_lora_steps_match_eager_and_the_adapter_reloads(make_config, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    eager, eager_losses, _, eager_result = _trained(make_config, tmp_path, False)
    compiled, losses, out, result = _trained(make_config, tmp_path, True)
    assert result.compiled and not eager_result.compiled
    assert len(losses) == len(eager_losses) == 4
    for a, b in zip(losses, eager_losses, strict=True):
        assert abs(a - b) <= 1e-5 * abs(b), (losses, eager_losses)
    assert losses[-1] < losses[0]  # it trains
    trained = {n: p for n, p in compiled.named_parameters() if p.requires_grad}
    reference = dict(eager.named_parameters())
    assert trained and all("lora_" in n for n in trained)
    # Adam divides each update by the root of its own squared gradients, so float noise (the compiled kernels sum in
    # another order) on an element whose gradient is near zero moves it by up to ~lr: measured 1.5e-4 at most
    # (lora_A of a layer whose B was 0 at step 1), 8e-5 of that tensor's norm. The gradients themselves agree
    # within 1e-5 (test_compiled_gradients_match_eager); the weights are held to 2e-4 relative per tensor.
    for n, p in trained.items():
        assert float((p - reference[n]).detach().norm() / reference[n].detach().norm()) <= 2e-4, n
        torch.testing.assert_close(p, reference[n], rtol=0, atol=5e-4)
    assert all(p.abs().sum() > 0 for n, p in trained.items() if "lora_B" in n)  # B starts at 0: every B moved
    # the model the loop trained keeps its own parameter names: it saves as peft's usual adapter
    compiled.save_pretrained(out / "adapter")
    keys = load_file(out / "adapter" / "adapter_model.safetensors").keys()
    assert keys and not any("_orig_mod" in k for k in keys)
    base = AutoModelForCausalLM.from_pretrained(make_config().model, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, out / "adapter").eval()
    ids = torch.tensor([[5, 9, 14, 20, 7, 30, 11]])
    compiled.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, compiled(input_ids=ids).logits,
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # (as above)
def test_compiled_gradients_match_eager(tiny_model_dir):
    """One packed forward/backward (3 samples in one row, restarted positions), compiled vs eager: the loss and
    every LoRA gradient within 1e-5 relative; the frozen weights get no gradient."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneforge.data.batching import collate
    from tuneforge.data.templates import Example
    from tuneforge.train.compile import compiled_forward
    from tuneforge.train.loss import loss_sum

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"))
    with torch.no_grad():  # B starts at 0: give every adapter a gradient and an effect
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    g = torch.Generator().manual_seed(0)
    examples = []
    for n in (23, 17, 31):
        ids = torch.randint(4, model.config.vocab_size, (n,), generator=g).tolist()
        examples.append(Example(input_ids=ids, labels=[-100] * 5 + ids[5:]))
    [batch] = collate(examples, True, 512)

    def loss_and_grads(runner):
        model.zero_grad(set_to_none=True)
        loss = loss_sum(runner, batch)
        loss.backward()
        return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref_loss, ref = loss_and_grads(model)
    loss, grads = loss_and_grads(compiled_forward(model, lambda _m: None))
    assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss)
    assert grads.keys() == ref.keys() and all("lora_" in n for n in grads)
    for n, grad in grads.items():
        assert float((grad - ref[n]).norm() / ref[n].norm()) <= 1e-5, n


def test_rows_padded_for_static_graphs_give_the_same_loss(tiny_model_dir):
    """The lever training.compile was measured against (bench/speed_levers.py: packed rows padded to pack_length,
    kept positions to a multiple of 128): eagerly, the same loss as the unpadded row, so the benchmark compared
    the same step."""
    import sys
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    from tuneforge.data.batching import collate
    from tuneforge.data.templates import Example
    from tuneforge.train.loss import loss_sum

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from speed_levers import padded_loss_sum

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(1)
    examples = [Example(input_ids=(ids := torch.randint(4, model.config.vocab_size, (n,), generator=g).tolist()),
                        labels=[-100] * 4 + ids[4:]) for n in (40, 25, 61)]
    [batch] = collate(examples, True, 512)
    with torch.no_grad():
        ref = float(loss_sum(model, batch))
        for length in (128, 512):
            assert abs(float(padded_loss_sum(model, batch, length)) - ref) <= 1e-5 * abs(ref)


def test_metrics_record_compile(make_config, tmp_path):
    from tuneforge.train.cost import cost_block
    from tuneforge.train.loop import TrainResult

    model = torch.nn.Module()
    model.get_input_embeddings = lambda: torch.nn.Embedding(4, 2)
    for compiled in (False, True):
        result = TrainResult(1, [{"loss": 1.0}], [], 10, 5, 1.0, None, compiled=compiled)
        block = cost_block(result, 0.0, model, (10, 100), "fp32", "supervised_tokens")
        assert block["compile"] is compiled and block["precision"] == "fp32"


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed"])
def test_compile_refused_with_sharded_strategies(make_config, strategy):
    cfg = make_config(training__compile=True, training__distributed=strategy)
    with pytest.raises(ConfigError, match=r"training\.compile"):
        check_compile(cfg)
    check_compile(make_config(training__compile=True))  # ddp / one process: allowed


def test_compile_refused_where_the_loop_does_not_train(make_config):
    cfg = make_config(training__compile=True)
    cfg.stage = "dpo"  # trained by TRL's trainer: nothing of ours to compile
    with pytest.raises(ConfigError, match=r"training\.compile.*'dpo'"):
        check_compile(cfg)
