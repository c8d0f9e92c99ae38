"""The methods peft implements: LoRA (with DoRA, rsLoRA, PiSSA/LoftQ/gaussian init), QLoRA, IA3,
prefix tuning and prompt tuning. Each is `to_peft_config` (pure mapping) + `apply`; `load_peft` reloads any
of them from a run directory (safetensors only)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch.nn as nn

from tuneforge.config.schema import IA3Config, LoraConfig, PrefixConfig, PromptConfig
from tuneforge.errors import ModelError
from tuneforge.methods.base import LoadBase, MethodContext
from tuneforge.methods.peft_import import bitsandbytes_hidden, load_peft_module
from tuneforge.methods.targets import ia3_targets, lora_targets

if TYPE_CHECKING:
    import peft

_LORA_INIT = {"default": True, "gaussian": "gaussian", "pissa": "pissa"}
PISSA_INIT_ATTR = "tuneforge_pissa_init"


def _get_peft_model(model: nn.Module, config) -> nn.Module:
    with bitsandbytes_hidden():
        return load_peft_module().get_peft_model(model, config)


def to_lora_config(mcfg: LoraConfig, ctx: MethodContext, targets: list[str] | str) -> peft.LoraConfig:
    return load_peft_module().LoraConfig(
        r=mcfg.r,
        lora_alpha=mcfg.alpha,
        lora_dropout=mcfg.dropout,
        target_modules=targets,
        bias=mcfg.bias,
        use_dora=mcfg.use_dora,
        use_rslora=mcfg.use_rslora,
        init_lora_weights=_LORA_INIT[mcfg.init],
        task_type=ctx.task_type,
    )


def apply_lora(model: nn.Module, mcfg: LoraConfig, ctx: MethodContext) -> nn.Module:
    targets = lora_targets(model, mcfg.target_modules, ctx.task_type)
    model = _get_peft_model(model, to_lora_config(mcfg, ctx, targets))
    if mcfg.init == "pissa":
        # PiSSA moves the principal components out of the base weights into A/B. To save an adapter that
        # applies to the *original* base, peft needs the initial adapter at save time (peft 0.21).
        init_dir = tempfile.mkdtemp(prefix="tuneforge-pissa-init-")
        model.peft_config["default"].init_lora_weights = True
        model.save_pretrained(init_dir)
        model.peft_config["default"].init_lora_weights = "pissa"
        setattr(model, PISSA_INIT_ATTR, init_dir)
    return model


def save_lora(model: nn.Module, directory: Path) -> None:
    init_dir = getattr(model, PISSA_INIT_ATTR, None)
    if init_dir:
        model.save_pretrained(str(directory), path_initial_model_for_weight_conversion=init_dir)
        shutil.rmtree(init_dir, ignore_errors=True)
        delattr(model, PISSA_INIT_ATTR)
    else:
        model.save_pretrained(str(directory))


def apply_qlora(model: nn.Module, mcfg: LoraConfig, ctx: MethodContext) -> nn.Module:
    # Casts norms to fp32 and makes inputs require grads; gradient checkpointing stays the user's choice
    # (peft turns it on by default, which costs ~40% speed on CPU for memory we rarely need).
    targets = lora_targets(model, mcfg.target_modules, ctx.task_type)
    peft = load_peft_module()
    model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=ctx.gradient_checkpointing)
    return _get_peft_model(model, to_lora_config(mcfg, ctx, targets))


def apply_ia3(model: nn.Module, mcfg: IA3Config, ctx: MethodContext) -> nn.Module:
    targets, feedforward = ia3_targets(model, mcfg.target_modules, mcfg.feedforward_modules)
    peft = load_peft_module()
    config = peft.IA3Config(target_modules=targets, feedforward_modules=feedforward, task_type=ctx.task_type)
    return _get_peft_model(model, config)


def apply_prefix(model: nn.Module, mcfg: PrefixConfig, ctx: MethodContext) -> nn.Module:
    peft = load_peft_module()
    config = peft.PrefixTuningConfig(num_virtual_tokens=mcfg.num_virtual_tokens, prefix_projection=mcfg.projection,
                                     task_type=ctx.task_type)
    return _get_peft_model(model, config)


def apply_prompt(model: nn.Module, mcfg: PromptConfig, ctx: MethodContext) -> nn.Module:
    # The sizes given: peft 0.21 reads them from the config's dict, where DistilBERT spells them dim / n_layers.
    peft = load_peft_module()
    sizes = {"token_dim": model.config.hidden_size, "num_layers": model.config.num_hidden_layers,
             "num_attention_heads": model.config.num_attention_heads}
    if mcfg.init_text:
        config = peft.PromptTuningConfig(
            num_virtual_tokens=mcfg.num_virtual_tokens, prompt_tuning_init=peft.PromptTuningInit.TEXT,
            prompt_tuning_init_text=mcfg.init_text, tokenizer_name_or_path=ctx.model_path, task_type=ctx.task_type,
            **sizes,
        )
    else:
        config = peft.PromptTuningConfig(num_virtual_tokens=mcfg.num_virtual_tokens, task_type=ctx.task_type, **sizes)
    return _get_peft_model(model, config)


def load_peft(load_base: LoadBase, run_dir: Path) -> nn.Module:
    """A peft adapter saved at the run's root, on a freshly loaded base. Only adapter_model.safetensors:
    without it peft would fall back to a pickled adapter_model.bin, which can run code when loaded."""
    PeftModel = load_peft_module().PeftModel  # noqa: N806

    if not (run_dir / "adapter_config.json").is_file():
        raise ModelError(f"{run_dir}: no adapter_config.json (the run did not finish?)")
    if not (run_dir / "adapter_model.safetensors").is_file():
        raise ModelError(f"{run_dir}: no adapter_model.safetensors; tuneforge does not load pickled adapters "
                         "(adapter_model.bin can run code when loaded)")
    # The adapter in the dtype it was trained and saved in: TRL 1.16's DPO/GRPO trainers keep QLoRA adapters in
    # bf16, and peft's default upcast to fp32 would make the reloaded run compute differently from the trained
    # one; an fp32 adapter needs the upcast (peft would otherwise create it in a 4-bit base's bf16 compute dtype).
    return PeftModel.from_pretrained(load_base(None), str(run_dir),
                                     autocast_adapter_dtype=not _saved_in_half(run_dir / "adapter_model.safetensors"))


def _saved_in_half(path: Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        dtypes = {f.get_slice(name).get_dtype() for name in f.keys()}
    return bool(dtypes) and dtypes <= {"BF16", "F16"}
