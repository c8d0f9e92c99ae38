"""The `method:` block: one model per fine-tuning method, told apart by `name`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from tuneforge.config.strict import Strict


class FullConfig(Strict):
    """Every parameter trains."""

    name: Literal["full"] = "full"


class FreezeConfig(Strict):
    """Partial fine-tuning: the last N blocks and/or named modules and/or matching parameters train."""

    name: Literal["freeze"] = "freeze"
    last_n_layers: int = Field(2, ge=0)
    modules: list[str] = Field(default_factory=list, description="e.g. lm_head, norm, embed_tokens")
    patterns: list[str] = Field(default_factory=list, description="regexes over parameter names")


class LoraConfig(Strict):
    name: Literal["lora"] = "lora"
    r: int = Field(8, ge=1)
    alpha: float = Field(16, gt=0)
    # 0 (was 0.05): the defaults study (docs/defaults-dropout-clip.md) found no task where dropout helped by more than
    # noise (facts, quickstart and pretraining equal or better without, classification within 0.01), while its
    # masks cost ~4% of a CPU step and, in fp32, an input copy per adapted layer
    dropout: float = Field(0.0, ge=0, lt=1)
    # None: per architecture (peft's mapping, e.g. Llama q_proj/v_proj, BERT query/value; else the attention's
    # linear layers); a list of layer names; or all-linear.
    target_modules: list[str] | Literal["all-linear"] | None = None
    bias: Literal["none", "all", "lora_only"] = "none"
    use_dora: bool = False
    use_rslora: bool = False
    # pissa: the saved adapter is converted so it applies to the original base (peft's conversion).
    init: Literal["default", "gaussian", "pissa"] = "default"


class QLoraConfig(LoraConfig):
    """LoRA on a base loaded in 4-bit NF4 (double quantization, bf16 compute) through bitsandbytes."""

    name: Literal["qlora"] = "qlora"  # type: ignore[assignment]


class IA3Config(Strict):
    name: Literal["ia3"] = "ia3"
    target_modules: list[str] | None = Field(None, description="default: peft's per-architecture choice, else the "
                                             "attention's linear layers")
    feedforward_modules: list[str] | None = None


class AdapterConfig(Strict):
    """Bottleneck adapters (down-project, non-linearity, up-project, residual), zero-initialised."""

    name: Literal["adapter"] = "adapter"
    size: int = Field(64, ge=1)
    where: Literal["attention", "mlp", "both"] = "both"
    activation: Literal["relu", "gelu", "silu"] = "relu"


class PrefixConfig(Strict):
    name: Literal["prefix"] = "prefix"
    num_virtual_tokens: int = Field(16, ge=1)
    projection: bool = False


class PromptConfig(Strict):
    name: Literal["prompt"] = "prompt"
    num_virtual_tokens: int = Field(16, ge=1)
    init_text: str | None = Field(None, description="initialise the virtual tokens from this text")


MethodConfig = Annotated[
    FullConfig | FreezeConfig | LoraConfig | QLoraConfig | IA3Config | AdapterConfig | PrefixConfig | PromptConfig,
    Field(discriminator="name"),
]
METHOD_CONFIGS: dict[str, type[Strict]] = {
    c.model_fields["name"].default: c
    for c in (FullConfig, FreezeConfig, LoraConfig, QLoraConfig, IA3Config, AdapterConfig, PrefixConfig, PromptConfig)
}
