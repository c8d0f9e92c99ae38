"""The recipes the benchmark compares. Each prepares everything a user's script would before training (model,
tokenized data, trainer) and returns a Setup: the model to count tokens on, the epoch to time, and the settings
as the library resolved them (read from the objects, never retyped). Every recipe gets the same rows, LoRA, batch,
learning rate, epochs and max_length (Common); what differs is what each library does with them."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from sftbench.data import Sample, chat, render


@dataclass
class Common:
    model: str
    batch: int
    lr: float
    max_len: int
    max_steps: int  # 0: one full epoch
    seed: int
    lora: dict[str, Any]


@dataclass
class Setup:
    model: torch.nn.Module
    fit: Callable[[], Any]
    settings: dict[str, Any]
    steps: Callable[[], int]
    log: list[str] = field(default_factory=list)


def _fields(obj: Any, keys: str) -> dict[str, Any]:
    missing = [k for k in keys.split() if not hasattr(obj, k)]
    if missing:  # a renamed key must fail loudly, never be recorded as "?"
        raise AttributeError(f"{type(obj).__name__} has no {missing}")
    out = {}
    for k in keys.split():
        v = getattr(obj, k)
        out[k] = getattr(v, "value", v)
    return out


def _hf_model(c: Common, dtype: torch.dtype = torch.float32) -> Any:
    from transformers import AutoModelForCausalLM

    from tuneforge.models.load import resolve_model

    return AutoModelForCausalLM.from_pretrained(resolve_model(c.model), dtype=dtype)


def _peft_lora(c: Common) -> Any:
    import peft

    return peft.LoraConfig(r=c.lora["r"], lora_alpha=c.lora["alpha"], lora_dropout=c.lora["dropout"],
                           target_modules=c.lora["target_modules"], task_type="CAUSAL_LM")


def _seed(train: list[Sample], tok: Any, tmp: str, c: Common, bf16: bool) -> Setup:
    """What the seeds' scripts do: tokenizer(..., padding="max_length"), labels = ids with prompt and pad
    positions masked, transformers.Trainer + peft, Trainer defaults otherwise."""
    import peft
    from transformers import Trainer, TrainingArguments, set_seed

    rows = []
    for s in train:
        enc = tok(render(tok, s), padding="max_length", max_length=c.max_len, truncation=True, return_tensors="pt")
        n_prompt = len(tok(render(tok, s, prompt_only=True))["input_ids"])
        ids, mask = enc["input_ids"][0], enc["attention_mask"][0]
        labels = ids.clone()
        labels[:n_prompt] = -100
        labels[mask == 0] = -100  # pad == eos here, so padding is found by the mask, never by id
        rows.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    set_seed(c.seed)
    model = peft.get_peft_model(_hf_model(c), _peft_lora(c))
    args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=c.batch, learning_rate=c.lr,
                             num_train_epochs=1, max_steps=c.max_steps or -1, report_to="none", save_strategy="no",
                             seed=c.seed, bf16=bf16, use_cpu=True)  # use_cpu: bf16 is refused without it on no-GPU
    trainer = Trainer(model=model, args=args, train_dataset=rows)
    settings = {**_fields(args, "bf16 gradient_checkpointing lr_scheduler_type warmup_steps optim "
                                "weight_decay max_grad_norm per_device_train_batch_size learning_rate"),
                "padding": f"max_length {c.max_len}", "matmul_dtype": "bf16" if bf16 else "fp32"}
    return Setup(model, trainer.train, settings, lambda: trainer.state.global_step)


def recipe_seed_fp32(train: list[Sample], tok: Any, tmp: str, c: Common) -> Setup:
    return _seed(train, tok, tmp, c, bf16=False)


def recipe_seed_bf16(train: list[Sample], tok: Any, tmp: str, c: Common) -> Setup:
    return _seed(train, tok, tmp, c, bf16=True)


TRL_KEYS = ("gradient_checkpointing bf16 packing packing_strategy padding_free completion_only_loss "
            "assistant_only_loss loss_type lr_scheduler_type warmup_steps pad_to_multiple_of optim "
            "max_length per_device_train_batch_size learning_rate")


def _trl(train: list[Sample], tok: Any, tmp: str, c: Common, model_dtype: torch.dtype = torch.float32,
         **tuned: Any) -> Setup:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    data = Dataset.from_list([{"prompt": chat(s)[:1], "completion": chat(s)[1:]} for s in train])
    kwargs: dict[str, Any] = {"per_device_train_batch_size": c.batch, **tuned}
    args = SFTConfig(output_dir=tmp, learning_rate=c.lr, num_train_epochs=1, max_steps=c.max_steps or -1,
                     max_length=c.max_len, report_to="none", save_strategy="no", seed=c.seed,
                     use_cpu=True,  # without it, TRL's default bf16=True is refused on a machine with no GPU
                     **kwargs)
    trainer = SFTTrainer(model=_hf_model(c, model_dtype), args=args, train_dataset=data, processing_class=tok,
                         peft_config=_peft_lora(c))
    settings = {**_fields(args, TRL_KEYS), "model_dtype": str(model_dtype).removeprefix("torch."),
                **{f"resolved_{k}": v for k, v in _fields(trainer, "padding_free completion_only_loss").items()},
                "tuned": sorted(tuned), "matmul_dtype": "bf16" if args.bf16 else "fp32"}
    return Setup(trainer.model, trainer.train, settings, lambda: trainer.state.global_step)


def recipe_trl_default(train: list[Sample], tok: Any, tmp: str, c: Common) -> Setup:
    """trl.SFTTrainer as shipped (gradient checkpointing on, bf16, dynamic padding, no packing)."""
    return _trl(train, tok, tmp, c)


def trl_cpu_rows(c: Common, mean_tokens: float) -> int:
    """Packed rows per step: about the tokens of c.batch samples (rows of c.max_len), so a TRL step holds about
    the work of the other recipes' steps."""
    return max(1, round(c.batch * mean_tokens / c.max_len))


def recipe_trl_cpu(train: list[Sample], tok: Any, tmp: str, c: Common,
                   model_dtype: torch.dtype = torch.float32) -> Setup:
    """TRL tuned for a CPU: bf16 autocast, no gradient checkpointing, best-fit-decreasing packing into rows of
    max_length (which turns on TRL's padding-free collator: position ids restart per sample; TRL passes
    use_cache=False, so transformers builds the block-diagonal SDPA mask from them). `model_dtype` bf16: the base
    loaded in bf16 as on a GPU (peft keeps the LoRA weights fp32), so its hidden states are bf16 too."""
    mean = sum(len(tok(render(tok, s), add_special_tokens=False)["input_ids"]) for s in train) / len(train)
    return _trl(train, tok, tmp, c, model_dtype, bf16=True, gradient_checkpointing=False, packing=True,
                packing_strategy="bfd", per_device_train_batch_size=trl_cpu_rows(c, mean))


def recipe_tuneforge(train: list[Sample], tok: Any, tmp: str, c: Common, **keys: Any) -> Setup:
    """The steps of `tuneforge train` (tuneforge.stages.lm.run_lm) up to training, through the same skeleton
    functions, with tuneforge's defaults for every key the Common settings (and `keys`, training keys) do not fix."""
    import tuneforge.stages.skeleton as skeleton
    from tuneforge.config.schema import Config
    from tuneforge.train import attention
    from tuneforge.train.loop import train as tf_train

    path = Path(tmp) / "train.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in train), encoding="utf-8")
    training: dict[str, Any] = {"batch_size": c.batch, "learning_rate": c.lr, "epochs": 1, "max_length": c.max_len,
                                **keys}
    if c.max_steps:
        training["max_steps"] = c.max_steps
    lora = {"r": c.lora["r"], "alpha": c.lora["alpha"], "dropout": c.lora["dropout"],
            "target_modules": c.lora["target_modules"]}
    cfg = Config.model_validate({"model": c.model, "stage": "sft", "method": {"name": "lora", **lora},
                                 "data": {"train": str(path)}, "training": training, "output_dir": f"{tmp}/run",
                                 "seed": c.seed})
    log: list[str] = []
    run = skeleton.begin(cfg, log.append)
    data = skeleton.load_data(run)
    skeleton.open_output(run)
    model, _ = skeleton.apply_method(run, skeleton.load_base(run))
    result: dict[str, Any] = {}

    def fit() -> None:
        result["train"] = tf_train(model, data.train, [], cfg, run.out, run.precision, log=log.append,
                                   packed=run.method.packing)

    t = cfg.training
    settings = {**_fields(t, "precision pack_length lr_scheduler warmup_ratio warmup_steps gradient_checkpointing "
                             "weight_decay max_grad_norm batch_size learning_rate epochs trim_memory "
                             "frozen_bf16 bf16_stream chunked_loss mmap_threshold_kb kernel_cache_entries "
                             "per_sample_attention"),
                "packing": run.method.packing, "resolved_precision": run.precision, "matmul_dtype": run.precision,
                "lora": lora, "short_sample_tokens": attention.SHORT_SAMPLE_TOKENS}
    return Setup(model, fit, settings, lambda: result["train"].steps, log)


def with_kernel_caches(recipe: Callable[[list[Sample], Any, str, Common], Setup], entries: int = 64
                       ) -> Callable[[list[Sample], Any, str, Common], Setup]:
    """A peer's recipe with oneDNN's kernel caches bounded as tuneforge bounds them (training.kernel_cache_entries),
    set before the recipe's first matmul: what its user could do by exporting the two variables."""

    def run(train: list[Sample], tok: Any, tmp: str, c: Common) -> Setup:
        from tuneforge.train.kernel_cache import bound_kernel_caches

        caches = bound_kernel_caches(entries)
        setup = recipe(train, tok, tmp, c)
        setup.settings["kernel_caches"] = caches
        return setup

    return run


def _sdpa_samples(setup: Setup) -> Setup:
    """tuneforge with every packed sample through SDPA (attention.SHORT_SAMPLE_TOKENS 0: session 13's per-sample
    attention, before the plain-ops path for short bf16 samples); this process only."""
    from tuneforge.train import attention

    attention.SHORT_SAMPLE_TOKENS = 0
    setup.settings["short_sample_tokens"] = 0
    return setup


RECIPES: dict[str, Callable[[list[Sample], Any, str, Common], Setup]] = {
    "seed-fp32": recipe_seed_fp32,
    "seed-bf16": recipe_seed_bf16,
    "trl-default": recipe_trl_default,
    "trl-cpu": recipe_trl_cpu,
    "tuneforge": recipe_tuneforge,
    # a lever measured against its absence (not one of the peers): bench_sft.py --recipes tuneforge,tuneforge-trim
    "tuneforge-trim": lambda train, tok, tmp, c: recipe_tuneforge(train, tok, tmp, c, trim_memory=True),
    "tuneforge-fp32-frozen": lambda train, tok, tmp, c: recipe_tuneforge(train, tok, tmp, c, frozen_bf16=False),
    "tuneforge-plain-loss": lambda train, tok, tmp, c: recipe_tuneforge(train, tok, tmp, c, chunked_loss=False),
    "tuneforge-mmap1m": lambda train, tok, tmp, c: recipe_tuneforge(train, tok, tmp, c, mmap_threshold_kb=1024),
    "tuneforge-cache1024": lambda train, tok, tmp, c: recipe_tuneforge(train, tok, tmp, c, kernel_cache_entries=None),
    "trl-cpu-cache64": with_kernel_caches(recipe_trl_cpu),  # the peer given tuneforge's kernel cache bound
    "tuneforge-masked-attn": lambda train, tok, tmp, c: recipe_tuneforge(train, tok, tmp, c,
                                                                         per_sample_attention=False),
    "tuneforge-sdpa-samples": lambda train, tok, tmp, c: _sdpa_samples(recipe_tuneforge(train, tok, tmp, c)),
    "tuneforge-dropout0": lambda train, tok, tmp, c: recipe_tuneforge(train, tok, tmp, replace(
        c, lora={**c.lora, "dropout": 0.0})),
    # the hidden states in bf16: tuneforge's training.bf16_stream, and TRL's with its base loaded in bf16
    "tuneforge-bf16-stream": lambda train, tok, tmp, c: recipe_tuneforge(train, tok, tmp, c, bf16_stream=True),
    "trl-cpu-bf16-model": lambda train, tok, tmp, c: recipe_trl_cpu(train, tok, tmp, c, torch.bfloat16),
}
PEERS = ("seed-fp32", "seed-bf16", "trl-default", "trl-cpu", "tuneforge")  # what `make bench` runs
DESCRIPTIONS = {
    "seed-fp32": "transformers.Trainer + peft, padding to max_length, fp32 (the seeds' recipe)",
    "seed-bf16": "the same with TrainingArguments(bf16=True): bf16 autocast",
    "trl-default": "trl.SFTTrainer with its defaults (gradient checkpointing, bf16, dynamic padding)",
    "trl-cpu": "trl.SFTTrainer tuned for CPU: bf16, no gradient checkpointing, packing='bfd' (padding-free)",
    "tuneforge": "tuneforge's skeleton + train loop with its defaults (precision auto, padding-free packing)",
    "tuneforge-trim": "the same with training.trim_memory on (freed heap pages go back after each step)",
    "tuneforge-fp32-frozen": "the same with training.frozen_bf16 off (frozen weights kept fp32, cast at every use)",
    "tuneforge-plain-loss": "the same with training.chunked_loss off (the head's whole logits, then cross-entropy)",
    "tuneforge-mmap1m": "the same with training.mmap_threshold_kb 1024 (blocks >= 1 MB mapped apart from the heap)",
    "tuneforge-masked-attn": "the same with training.per_sample_attention off (packed rows attend over the row's "
                             "masked N x N)",
    "tuneforge-sdpa-samples": "the same with every packed sample through SDPA's kernel (no plain-ops path for "
                              "short bf16 samples)",
    "tuneforge-dropout0": "the same with LoRA dropout 0 (not a peer setting: the others keep 0.05)",
    "tuneforge-bf16-stream": "the same with training.bf16_stream (embeddings and norms held in bf16 too: bf16 "
                             "hidden states)",
    "trl-cpu-bf16-model": "trl-cpu with the base loaded in bf16 (dtype=torch.bfloat16; peft keeps LoRA in fp32)",
    "trl-cpu-cache64": "trl-cpu with oneDNN's kernel caches bounded to 64 entries each, as tuneforge bounds them",
    "tuneforge-cache1024": "the same with training.kernel_cache_entries null (oneDNN's kernel caches at their "
                           "default 1,024 entries each)",
}
