"""Typed config schema: the one place that says which keys exist, their types and defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tuneforge.config.method_schema import (  # noqa: F401  (re-exported: the schema's public names)
    METHOD_CONFIGS,
    AdapterConfig,
    FreezeConfig,
    FullConfig,
    IA3Config,
    LoraConfig,
    MethodConfig,
    PrefixConfig,
    PromptConfig,
    QLoraConfig,
)
from tuneforge.config.stage_schema import (  # noqa: F401
    CpoConfig,
    DpoConfig,
    GrpoConfig,
    KtoConfig,
    OrpoConfig,
    PpoConfig,
    RewardSourceConfig,
    SamplingConfig,
    SimpoConfig,
)
from tuneforge.config.strict import Strict
from tuneforge.stage_info import STAGE_INFO


class DataSource(Strict):
    """One file of a mix (data.train / data.eval as a list); a plain string in the list is {path: it}."""

    path: str
    weight: float = Field(1.0, gt=0, description="share of the mix: weight / sum of weights (train only)")

    @model_validator(mode="before")
    @classmethod
    def _from_path(cls, value):
        return {"path": value} if isinstance(value, str) else value


class DataConfig(Strict):
    # One file, or several sources mixed by weight ([{path: a.jsonl, weight: 0.7}, {path: b.jsonl, weight: 0.3}]):
    # sft / pretrain; each source is checked and cached on its own, the mix is seeded (data.mixing).
    train: str | list[DataSource]
    # Several eval files: each one's loss is reported beside the loss over all of them.
    eval: str | list[DataSource] | None = None
    format: Literal["auto", "alpaca", "prompt_completion", "messages", "text"] = "auto"
    # auto: the tokenizer's chat template when it has one, else the alpaca prompt template; chatml_tools: built-in
    # Hermes-style tool calling in ChatML (docs/tools.md), for models whose template cannot render tools.
    template: Literal["auto", "chat", "alpaca", "chatml_tools"] = "auto"
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


class DeepSpeedConfig(Strict):
    """training.deepspeed (with training.distributed: deepspeed): ZeRO-2 shards gradients + optimizer states,
    ZeRO-3 the weights too; offload moves optimizer states (2, 3) or weights (3 only) to CPU RAM or NVMe."""

    zero_stage: Literal[2, 3] = 2
    offload_optimizer: Literal["none", "cpu", "nvme"] = "none"
    offload_params: Literal["none", "cpu", "nvme"] = "none"
    nvme_path: str | None = None


class TrainingConfig(Strict):
    max_steps: int | None = Field(None, ge=1)
    # null: chosen from the data (train.recipe: ~150 optimizer steps for a small set, one pass over a large one)
    epochs: float | None = Field(None, gt=0)
    # null: the method's default rate (methods carry default_lr); the run logs and records which rate and why
    learning_rate: float | None = Field(None, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    warmup_steps: int | None = Field(None, ge=0)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(1024, ge=8)
    # split: pretrain only, long documents become max_length chunks. Default (null): split for pretrain, so
    # every token of a long document trains; truncate for every other stage.
    overlength: Literal["truncate", "drop", "error", "split"] | None = None
    # Padding-free packing: a micro-batch's samples share rows of at most pack_length tokens, position ids
    # restarting per sample (prefix/prompt tuning use padded rows instead).
    pack_length: int = Field(512, ge=8)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    # auto: bf16 on a GPU that supports it, fp16 with a gradient scaler on one that does not, on the CPU bf16
    # autocast where it has native bf16 and a probe finds bf16 matmuls at least as fast as fp32 (without AMX they
    # are slower), else fp32 (tuneforge/train/precision.py). fp16: CUDA only.
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    # auto | cpu | cuda | cuda:N | mps; auto = CUDA if present, else MPS, else CPU (tuneforge/device.py).
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda|cuda:\d+|mps)$")
    gradient_checkpointing: bool = False
    # On the CPU, hand the memory freed by each optimizer step back to the system (glibc malloc_trim), so peak
    # RSS follows what is in use rather than what the heap once held: measured 0.84x the peak RSS for 0.87x the
    # training speed (docs/benchmarks.md, "Memory"), so off unless memory is what limits you. Either way the heap
    # is handed back once when training ends, before the evaluation after it.
    trim_memory: bool = False
    # On the CPU (glibc), map blocks of at least this many KB apart from the heap so that freeing them returns them
    # at once and they leave no holes in it (tuneforge/train/heap.py): 1024 measured 0.89x the peak RSS; off
    # (null) by default, since every such block's pages are faulted in again (docs/benchmarks.md, "Memory").
    mmap_threshold_kb: int | None = Field(None, ge=64, le=32768)
    # Under bf16 autocast, hold the frozen linear weights (a LoRA / QLoRA base, frozen layers) in bf16 while
    # training: autocast rounds them to bf16 at every use anyway, so training is bit for bit the same, without
    # the fp32 weights and their per-forward casts in memory; they are read back in fp32 from the model's files
    # when training ends (tuneforge/train/frozen.py; measured in docs/benchmarks.md, "Memory").
    frozen_bf16: bool = True
    # Under bf16 autocast, hold every frozen fp32 weight in bf16 while training (embeddings, norms too), so the hidden
    # states between layers are bf16 as on a GPU model loaded in bf16: no casts around each layer, half the
    # activations' bytes, losses within bf16 rounding of the fp32-stream run rather than bit for bit
    # (tuneforge/train/frozen.py; measured in docs/benchmarks.md). Not for prefix / prompt tuning.
    bf16_stream: bool = False
    # The LM loss makes the head's logits a chunk of supervised positions at a time, with their gradient at once,
    # so the [positions x vocabulary] logits and log-probabilities never exist whole (~0.5 MB a supervised token
    # on a 49k vocabulary); the same loss and gradients within float rounding (tuneforge/train/chunked_loss.py).
    # Plain causal LMs (Llama, Mistral, Qwen, Phi-3, OLMo), not with compile, fsdp or deepspeed.
    chunked_loss: bool = True
    # On the CPU, keep at most this many compiled kernels in each of oneDNN's two kernel caches (default 1,024
    # each): packed rows change length every step, so the bf16 matmuls' kernels pile up at ~0.5-1 MB each; 64 took
    # the benchmark's peak RSS from 2.5 to 1.7 GB at the same speed (tuneforge/train/kernel_cache.py). Set before
    # the process's first bf16 matmul; ONEDNN_PRIMITIVE_CACHE_CAPACITY / LRU_CACHE_CAPACITY in the environment win.
    # null: the libraries' defaults.
    kernel_cache_entries: int | None = Field(64, ge=1)
    # Packed rows: each sample attends causally to itself alone (SDPA over its own slice) instead of the row's
    # whole N x N scores under a block-diagonal mask: the same attention, 1.07x a LoRA step on a Zen 4 under bf16;
    # on the CPU, bf16 samples up to 256 tokens through plain ops instead of SDPA's kernel, 1.14x more
    # (tuneforge/train/attention.py). Models on transformers' SDPA attention, not with compile.
    per_sample_attention: bool = True
    # torch.compile (inductor) for the training forward, dynamic shapes; the first step includes compile time.
    # Measured in docs/benchmarks.md ("torch.compile"); not with fsdp / deepspeed (tuneforge/train/compile.py).
    compile: bool = False
    # Under torchrun / --nproc: ddp = every rank holds the whole model; fsdp = torch's fully_shard (FSDP2):
    # parameters, gradients and optimizer states split over the ranks (docs/distributed.md). deepspeed: ZeRO
    # through accelerate, validated and its launch files generated (tuneforge plan --launch-files), not trained yet.
    distributed: Literal["ddp", "fsdp", "deepspeed"] = "ddp"
    deepspeed: DeepSpeedConfig | None = None
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
    # The base's scores reused from an earlier run with the same model files, eval rows and settings
    # (tuneforge/evaluation/base_cache.py); false: evaluated afresh.
    before_cache: bool = True
    # None: every eval row is scored (loss, accuracy); a cap uses the first N and the run says "N of M".
    max_samples: int | None = Field(None, ge=1, description="eval rows scored; null: all")
    # The generated prompts' metrics (exact_match, token_f1) cover these rows only; the run says "N of M".
    generate_samples: int = Field(16, ge=0, description="prompts generated before/after for the report")
    max_new_tokens: int = Field(64, ge=1)
    metrics: list[Literal["exact_match", "token_f1", "tool_call_match"]] = Field(
        default_factory=lambda: ["exact_match", "token_f1"])


STAGE_BLOCKS = {"dpo": "dpo", "ppo": "ppo", "grpo": "grpo",  # stage -> its own config block
                "kto": "kto", "orpo": "orpo", "simpo": "simpo", "cpo": "cpo"}
# Blocks with defaults for every key: the stage gets one when the config has none.
_DEFAULT_BLOCKS = {"dpo": DpoConfig, "kto": KtoConfig, "orpo": OrpoConfig, "simpo": SimpoConfig, "cpo": CpoConfig}


class Config(Strict):
    model: str
    stage: Literal["sft", "pretrain", "classify", "reward", "dpo", "ppo", "grpo", "kto", "orpo", "simpo", "cpo"]
    method: MethodConfig = Field(default_factory=LoraConfig)
    data: DataConfig
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output_dir: str
    seed: int = 42
    resume: str | None = Field(None, description="auto | PATH to a checkpoint")
    # Resuming with a changed model, training data, seed, learning rate or schedule (lr_scheduler and its
    # warmup) is refused unless that change is listed here (and then logged).
    resume_allow_changes: list[Literal["model", "data", "seed", "learning_rate", "lr_scheduler"]] = Field(
        default_factory=list)
    overwrite: bool = False
    trust_remote_code: bool = False
    # The block of the preference / RL stage; only that stage's block may be given.
    dpo: DpoConfig | None = None
    ppo: PpoConfig | None = None
    grpo: GrpoConfig | None = None
    kto: KtoConfig | None = None
    orpo: OrpoConfig | None = None
    simpo: SimpoConfig | None = None
    cpo: CpoConfig | None = None

    @model_validator(mode="after")
    def _stage_block(self) -> Config:
        for stage, key in STAGE_BLOCKS.items():
            if getattr(self, key) is not None and self.stage != stage:
                raise ValueError(f"key {key!r} is for stage {stage!r} (this config has stage {self.stage!r})")
        if self.stage in _DEFAULT_BLOCKS and getattr(self, self.stage) is None:
            setattr(self, self.stage, _DEFAULT_BLOCKS[self.stage]())
        if self.stage in ("ppo", "grpo") and getattr(self, self.stage) is None:
            raise ValueError(f"stage {self.stage!r} needs a {self.stage!r} block with its rewards, e.g. "
                             f"{self.stage}: {{rewards: [{{run: runs/reward}}]}}")
        return self

    @model_validator(mode="after")
    def _overlength_default(self) -> Config:
        if self.training.overlength is None:  # pretrain: every token of a long document trains
            info = STAGE_INFO.get(self.stage)
            self.training.overlength = "split" if info and info.records == "pretrain" else "truncate"
        return self
