"""Typed config schema: the one place that says which keys exist, their types and defaults."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
    dropout: float = Field(0.05, ge=0, lt=1)
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


class DataConfig(Strict):
    train: str
    eval: str | None = None
    format: Literal["auto", "alpaca", "prompt_completion", "messages", "text"] = "auto"
    # auto: the tokenizer's chat template when it has one, else the alpaca prompt template.
    template: Literal["auto", "chat", "alpaca"] = "auto"
    system_prompt: str | None = None
    # false: control tokens written in data fields (`<|im_end|>`, `<|im_start|>system`) are plain text, so a row
    # cannot forge a turn; true: they become the template's special tokens (data meant to carry them).
    special_tokens_in_text: bool = False
    # Pretrain and classify: text column name; sft ignores it.
    text_field: str = "text"
    # Classify: label column, optional second text (pairs), and the label order (default: sorted labels
    # of the training file). Labels are read as strings; the mapping is saved with the run (labels.json).
    label_field: str = "label"
    text_pair_field: str | None = None
    labels: list[str] | None = Field(None, min_length=2)
    eval_split: float = Field(0.0, ge=0, lt=1, description="hold out this share of train when no eval file")


class TrainingConfig(Strict):
    max_steps: int | None = Field(None, ge=1)
    epochs: float = Field(1.0, gt=0)
    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    warmup_steps: int | None = Field(None, ge=0)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(1024, ge=8)
    # split: pretrain only, long documents become max_length chunks.
    overlength: Literal["truncate", "drop", "error", "split"] = "truncate"
    # Padding-free packing: a micro-batch's samples share rows of at most pack_length tokens, position ids
    # restarting per sample (prefix/prompt tuning use padded rows instead).
    pack_length: int = Field(512, ge=8)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    gradient_checkpointing: bool = False
    eval_steps: int | None = Field(None, ge=1)
    save_steps: int | None = Field(None, ge=1)
    save_total_limit: int = Field(2, ge=1)
    logging_steps: int = Field(1, ge=1)
    max_bad_steps: int = Field(5, ge=1, description="stop after this many consecutive non-finite steps")
    # Classify: weight the cross-entropy per class; "balanced" = n_samples / (n_classes * count(class)).
    class_weights: Literal["none", "balanced"] | dict[str, float] = "none"
    # Where scalars go: TensorBoard (output_dir/tensorboard) and optionally MLflow (pip install mlflow-skinny);
    # MLflow's default store is a local SQLite file, output_dir/mlflow.db.
    report_to: list[Literal["tensorboard", "mlflow"]] = Field(default_factory=lambda: ["tensorboard"])
    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str = "tuneforge"
    progress: bool = True


class EvalConfig(Strict):
    before: bool = True
    max_samples: int = Field(200, ge=1, description="eval-loss rows")
    generate_samples: int = Field(16, ge=0, description="prompts generated before/after for the report")
    max_new_tokens: int = Field(64, ge=1)
    metrics: list[Literal["exact_match", "token_f1"]] = Field(default_factory=lambda: ["exact_match", "token_f1"])


class RewardSourceConfig(Strict):
    """One reward for ppo / grpo: a finished `reward` run (its scalar head scores prompt + completion,
    rendered like its training data), or a Python function named `module:function` with TRL's reward
    signature `fn(prompts, completions, **columns) -> list[float]` (columns: the prompt rows' other fields).
    Several sources add up, each times its weight."""

    run: str | None = None
    function: str | None = Field(None, description="module:function, e.g. tuneforge.rl.rewards:exact_match")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments for the function")
    weight: float = 1.0

    @model_validator(mode="after")
    def _one_source(self) -> RewardSourceConfig:
        if (self.run is None) == (self.function is None):
            raise ValueError("give exactly one of 'run' (a reward run directory) or 'function' (module:function)")
        if self.function is not None and (self.function.count(":") != 1 or not all(self.function.split(":"))):
            raise ValueError(f"'function' must look like module:function, got {self.function!r}")
        return self


class DpoConfig(Strict):
    """Direct preference optimisation (TRL DPOTrainer). With a PEFT method the reference model is the
    adapter-disabled base, not a second copy."""

    beta: float = Field(0.1, gt=0)
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)


class SamplingConfig(Strict):
    """How ppo / grpo sample completions from the policy."""

    max_new_tokens: int = Field(32, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0: no top-k cut")


class PpoConfig(SamplingConfig):
    """tuneforge's own PPO (stages/ppo.py): training.batch_size prompts per rollout, training.max_steps
    rollouts; each rollout is optimised for `ppo_epochs` passes in minibatches of `minibatch_size`."""

    rewards: list[RewardSourceConfig] = Field(min_length=1)
    ppo_epochs: int = Field(2, ge=1)
    minibatch_size: int = Field(4, ge=1)
    clip_range: float = Field(0.2, gt=0)
    clip_range_value: float = Field(0.2, gt=0)
    vf_coef: float = Field(0.1, ge=0)
    gamma: float = Field(1.0, gt=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    kl_coef: float = Field(0.05, ge=0, description="initial (adaptive) or fixed KL penalty coefficient")
    kl_control: Literal["adaptive", "fixed"] = "adaptive"
    target_kl: float = Field(6.0, gt=0, description="adaptive control: target KL per completion (nats)")
    kl_horizon: int = Field(10000, ge=1)
    max_kl: float | None = Field(30.0, gt=0, description="stop when a rollout's mean KL exceeds this")
    whiten_advantages: bool = True


class GrpoConfig(SamplingConfig):
    """Group relative policy optimisation (TRL GRPOTrainer): training.batch_size prompts per step, each
    sampled `num_generations` times; advantages are rewards relative to their group."""

    rewards: list[RewardSourceConfig] = Field(min_length=1)
    num_generations: int = Field(4, ge=2)
    beta: float = Field(0.04, ge=0, description="KL penalty to the reference (0: no reference model)")
    epsilon: float = Field(0.2, gt=0, description="clip range of the probability ratio")
    num_iterations: int = Field(1, ge=1, description="optimisation passes per generated batch")
    # TRL 1.16's loss formulations (GRPOConfig.loss_type; dapo is TRL's default); luspo runs at sequence level.
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"] = "dapo"
    # Divide advantages by the std of the group, of the whole batch, or not at all; true / false mean group / none.
    scale_rewards: Literal["group", "batch", "none"] = "group"

    @field_validator("scale_rewards", mode="before")
    @classmethod
    def _scale_rewards_bool(cls, value: Any) -> Any:
        return {True: "group", False: "none"}.get(value, value) if isinstance(value, bool) else value


STAGE_BLOCKS = {"dpo": "dpo", "ppo": "ppo", "grpo": "grpo"}  # stage -> its own config block


class Config(Strict):
    model: str
    stage: Literal["sft", "pretrain", "classify", "reward", "dpo", "ppo", "grpo"]
    method: MethodConfig = Field(default_factory=LoraConfig)
    data: DataConfig
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output_dir: str
    seed: int = 42
    resume: str | None = Field(None, description="auto | PATH to a checkpoint")
    # Resuming with a changed model, training data, seed or learning rate is refused unless that change is
    # listed here (and then logged).
    resume_allow_changes: list[Literal["model", "data", "seed", "learning_rate"]] = Field(default_factory=list)
    overwrite: bool = False
    trust_remote_code: bool = False
    # The block of the preference / RL stage; only that stage's block may be given.
    dpo: DpoConfig | None = None
    ppo: PpoConfig | None = None
    grpo: GrpoConfig | None = None

    @model_validator(mode="after")
    def _stage_block(self) -> Config:
        for stage, key in STAGE_BLOCKS.items():
            if getattr(self, key) is not None and self.stage != stage:
                raise ValueError(f"key {key!r} is for stage {stage!r} (this config has stage {self.stage!r})")
        if self.stage == "dpo" and self.dpo is None:
            self.dpo = DpoConfig()
        if self.stage in ("ppo", "grpo") and getattr(self, self.stage) is None:
            raise ValueError(f"stage {self.stage!r} needs a {self.stage!r} block with its rewards, e.g. "
                             f"{self.stage}: {{rewards: [{{run: runs/reward}}]}}")
        return self
