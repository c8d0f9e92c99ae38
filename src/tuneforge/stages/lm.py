"""The flow shared by the causal-LM stages (sft, pretrain): validate everything that can be validated
before a model loads, evaluate the base, apply the method, train, evaluate again, save atomically.
Under torchrun / accelerate launch every rank trains on its shard; rank 0 alone evaluates and writes.
"""

from __future__ import annotations

import importlib.util
import json
import random
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tuneforge.config.load import dump_config
from tuneforge.config.schema import Config
from tuneforge.data.dataset import load_examples, load_train_eval_records
from tuneforge.data.load import Record
from tuneforge.data.templates import apply_template
from tuneforge.errors import ConfigError
from tuneforge.evaluation.generate import generate
from tuneforge.evaluation.metrics import compute
from tuneforge.fsutil import make_temp_dir, move_dir_contents, write_json_atomic, write_text_atomic
from tuneforge.methods import METHODS, Method, MethodContext, check_compat, count_params
from tuneforge.models import load_model, load_tokenizer, resolve_model
from tuneforge.report.write import write_report
from tuneforge.train import distributed as ddp
from tuneforge.train.loop import TrainResult, train
from tuneforge.train.loss import evaluate_loss
from tuneforge.train.precision import resolve_precision


@dataclass
class GenerationItem:
    prompt: str
    reference: str | None


ItemsFn = Callable[[Config, object, list[Record]], list[GenerationItem]]


def check_config(cfg: Config) -> None:
    """Cross-key checks that the schema cannot express; run before anything loads."""
    check_compat(cfg.method.name, cfg.stage)
    if "mlflow" in cfg.training.report_to and importlib.util.find_spec("mlflow") is None:
        raise ConfigError("key 'training.report_to': mlflow is not installed; pip install 'tuneforge[mlflow]'")
    if cfg.stage != "pretrain" and cfg.training.overlength == "split":
        raise ConfigError("key 'training.overlength': 'split' is for the pretrain stage; use truncate, drop or error")


def prepare_output_dir(cfg: Config) -> Path:
    out = Path(cfg.output_dir)
    if out.exists() and any(out.iterdir()) and not cfg.resume:
        ours = (out / "config.yaml").is_file() or (out / "checkpoints").is_dir()
        if cfg.overwrite and ours:
            shutil.rmtree(out)
        else:
            hint = "resume=auto to continue it, overwrite=true to replace it" if ours else "another output_dir"
            raise ConfigError(f"key 'output_dir': {out} is not empty; use {hint}")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _eval(model, tokenizer, cfg: Config, examples, items: list[GenerationItem], precision: str, task_metrics: bool,
          packed: bool = True):
    result = (evaluate_loss(model, examples, cfg.training.batch_size, precision, packed, cfg.training.pack_length)
              if examples else {})
    outputs = generate(model, tokenizer, [i.prompt for i in items], cfg.eval.max_new_tokens, precision) if items else []
    if task_metrics and items:
        result.update(compute(cfg.eval.metrics, outputs, [i.reference or "" for i in items]))
    return result, outputs


def _save_model(model, tokenizer, out: Path, method: Method | None = None) -> None:
    tmp = make_temp_dir(out, ".final.")
    try:
        if method and method.save:
            method.save(model, tmp)
        else:  # peft: adapter_model.safetensors + adapter_config.json; full/freeze: the whole model
            model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))  # includes the chat template the run trained with
        move_dir_contents(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _model_flops(model, tokens: int, trainable: int, total: int) -> float:
    """~4 x params x tokens when the base is frozen (no weight gradients), ~6x when everything trains."""
    emb = model.get_input_embeddings().weight.numel()
    factor = 6 if trainable >= 0.5 * total else 4
    return float(factor * (total - emb) * tokens)


def cost_metrics(result: TrainResult, wall_start: float, model, trainable: int, total: int, precision: str,
                 unit: str) -> dict:
    """metrics.json's `train` block. `unit` names what the loss averages over (supervised_tokens, samples)."""
    train_seconds = max(result.train_seconds, 1e-9)
    return {
        "steps": result.steps,
        "final_loss": result.history[-1]["loss"] if result.history else None,
        "tokens": result.tokens_seen,
        unit: result.supervised_seen,
        "tokens_per_second": result.tokens_seen / train_seconds,
        f"{unit}_per_second": result.supervised_seen / train_seconds,
        "train_seconds": result.train_seconds,
        "wall_seconds": time.perf_counter() - wall_start,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": 100 * trainable / total,
        "precision": precision,
        "model_flops": _model_flops(model, result.tokens_seen, trainable, total),
        "resumed_from": result.resumed_from,
        "world_size": ddp.world_size(),  # processes that shared each step (torchrun / accelerate launch)
        "resume_changes": result.resume_changes,  # what resume_allow_changes let through, if anything
        "skipped_steps": result.skipped_steps,  # non-finite steps whose update was skipped
    }


def _check_resume_config(path: Path, cfg: Config) -> None:
    from tuneforge.config.load import load_config
    from tuneforge.train.checkpoint import check_resume_config

    try:
        saved = load_config(path)
    except ConfigError:  # written by another tuneforge version: the checkpoint's fingerprints still guard
        return
    check_resume_config(saved, cfg, path.parent / "checkpoints")


def start_ranks(log: Callable[[str], None]) -> Callable[[str], None]:
    """Join the process group if launched distributed; ranks other than 0 log nothing."""
    ddp.init_from_env()
    return log if ddp.is_main() else (lambda _msg: None)


def prepare_output_dir_once(cfg: Config) -> Path:
    """Rank 0 checks and creates output_dir and writes config.yaml; the others wait for it."""
    out = Path(cfg.output_dir)
    if ddp.is_main():
        out = prepare_output_dir(cfg)
        if cfg.resume and (out / "config.yaml").is_file():
            _check_resume_config(out / "config.yaml", cfg)
        write_text_atomic(out / "config.yaml", dump_config(cfg))
    ddp.barrier()
    return out


def run_lm(cfg: Config, items_fn: ItemsFn, task_metrics: bool = True, log: Callable[[str], None] = print, *,
           on_eval: Callable[[int, dict], None] | None = None) -> Path:
    """`on_eval(step, result)` sees every periodic evaluation (tuneforge hpo prunes from it)."""
    wall_start = time.perf_counter()
    log = start_ranks(log)
    check_config(cfg)
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    template = apply_template(tokenizer, cfg.data.template) if cfg.stage == "sft" else None
    train_records, eval_records = load_train_eval_records(cfg, log)
    train_examples, train_stats = load_examples(cfg, tokenizer, cfg.data.train, train_records)
    data_stats = {"train": train_stats.summary()}
    eval_examples: list = []
    if eval_records:
        eval_examples, eval_stats = load_examples(cfg, tokenizer, cfg.data.eval or cfg.data.train, eval_records[: cfg.eval.max_samples])
        data_stats["eval"] = eval_stats.summary()
    items = items_fn(cfg, tokenizer, eval_records)
    log(f"data: {train_stats.examples} train / {len(eval_examples)} eval samples, format {train_stats.format}, "
        f"template {template or 'none'}, {train_stats.truncated} truncated, {train_stats.dropped_overlength + train_stats.dropped_no_supervised} dropped")

    out = prepare_output_dir_once(cfg)  # nothing is written before every input above checked out
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    precision = resolve_precision(cfg.training.precision)
    method = METHODS[cfg.method.name]
    model = load_model(cfg.model, cfg.trust_remote_code, quantize_4bit=method.quantized_base)
    if cfg.training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()

    before_file = out / "eval_before.json"  # computed once, so a resumed run reports the same base
    if not ddp.is_main():
        eval_before, base_outputs = {}, []
    elif cfg.eval.before and before_file.is_file():
        saved = json.loads(before_file.read_text())
        eval_before, base_outputs = saved["metrics"], saved["generations"]
    elif cfg.eval.before:
        log("evaluating the base model ...")
        eval_before, base_outputs = _eval(model, tokenizer, cfg, eval_examples, items, precision, task_metrics)
        write_json_atomic(before_file, {"metrics": eval_before, "generations": base_outputs})
    else:
        eval_before, base_outputs = {}, []
    ctx = MethodContext(model_path=resolve_model(cfg.model), gradient_checkpointing=cfg.training.gradient_checkpointing)
    model = method.apply(model, cfg.method, ctx)
    trainable, total = count_params(model)
    log(f"method {cfg.method.name}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.3f}%)")

    result = train(model, train_examples, eval_examples, cfg, out, precision, log=log, packed=method.packing,
                   on_eval=on_eval)
    if not ddp.is_main():
        ddp.shutdown()  # waits at a barrier until rank 0 has written everything
        return out
    log("evaluating the tuned model ...")
    eval_after, tuned_outputs = _eval(model, tokenizer, cfg, eval_examples, items, precision, task_metrics,
                                      method.packing)
    _save_model(model, tokenizer, out, method)
    write_json_atomic(out / "template.json", {"template": template, "chat_template": tokenizer.chat_template,
                                              "system_prompt": cfg.data.system_prompt})
    generations = [{"prompt": i.prompt, "reference": i.reference, "base": b, "tuned": t}
                   for i, b, t in zip(items, base_outputs or [""] * len(items), tuned_outputs, strict=True)]
    write_text_atomic(out / "generations.jsonl", "".join(json.dumps(g) + "\n" for g in generations))
    write_text_atomic(out / "train_log.jsonl", "".join(json.dumps(h) + "\n" for h in result.history))
    metrics = {
        "model": cfg.model, "stage": cfg.stage, "method": cfg.method.name,
        "eval_before": eval_before or None,
        "eval_after": eval_after,
        "train": cost_metrics(result, wall_start, model, trainable, total, precision, "supervised_tokens"),
        "evals": result.evals,
        "data": data_stats,
    }
    write_report(out, metrics, generations, result.history, result.evals, dump_config(cfg))
    ddp.shutdown()
    return out
