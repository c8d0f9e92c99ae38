"""Evaluate a finished run (its base model and the tuned model, on the same rows, with the run's saved
chat template) or a single model on a data file: loss and perplexity, then greedy generations scored with
exact match, token F1, ROUGE-L, BLEU and chrF. Writes eval.json, rows.jsonl, eval.md, eval.png and
a self-contained eval.html, atomically.

    tuneforge eval runs/quickstart --data examples/data/quickstart/eval.jsonl --max-samples 40
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from tuneforge.config.schema import Config
from tuneforge.data.dataset import load_examples
from tuneforge.data.formats import detect_format
from tuneforge.data.load import Record, load_records
from tuneforge.device import for_command
from tuneforge.errors import ConfigError, DataError, ModelError
from tuneforge.evaluation.classify_eval import evaluate_classifier
from tuneforge.evaluation.generate import generate
from tuneforge.evaluation.items import generation_items
from tuneforge.evaluation.metrics import METRICS, OPT_IN, compute
from tuneforge.evaluation.request import Request, default_output, first_rows, is_run_dir
from tuneforge.stage_info import stage_info
from tuneforge.train.kernel_cache import bound_kernel_caches
from tuneforge.train.loss import evaluate_lm_loss
from tuneforge.train.precision import resolve_precision

LOSS_METRICS = ("loss", "perplexity")
CLASSIFY_METRICS = ("accuracy", "macro_f1")


@dataclass
class Candidate:
    """One model to evaluate: a name in the report and how to load it (models are loaded one at a time)."""

    name: str
    load: Callable[[], object]
    packed: bool = True  # prompt learning cannot share packed rows


@dataclass
class Plan:
    cfg: Config
    tokenizer: object
    candidates: list[Candidate]
    info: dict = field(default_factory=dict)


def split_metrics(names: list[str], stage: str) -> tuple[bool, list[str]]:
    """(compute loss?, generation metrics) after checking every name."""
    known = [*LOSS_METRICS, *METRICS]
    unknown = [n for n in names if n not in known]
    if unknown:
        classify = set(unknown) & set(CLASSIFY_METRICS)
        extra = f" ({', '.join(CLASSIFY_METRICS)} are for classification runs)" if classify else ""
        raise ConfigError(f"--metrics: unknown {', '.join(unknown)}; known for {stage}: {', '.join(known)}{extra}")
    return any(n in LOSS_METRICS for n in names), [n for n in names if n in METRICS]


def default_metrics(stage: str) -> list[str]:
    # Chat stages answer with a reference to score against; raw-text continuations have no single right
    # answer, so pretraining's quality measure is loss / perplexity.
    return ["loss", *(m for m in METRICS if m not in OPT_IN)] if stage_info(stage).chat_template else ["loss"]


def rows_config(cfg: Config) -> Config:
    """The config that reads eval rows as the run's model is scored on them: a chat-template stage (sft, dpo,
    ppo, grpo) on chat rows (sft records: the loss of the reference answer), pretraining on raw text."""
    return cfg.model_copy(update={"stage": "sft" if stage_info(cfg.stage).chat_template else "pretrain"})


def _detect_stage(record: Record) -> str:
    try:
        detect_format(record, "sft")
        return "sft"
    except DataError:
        if "text" in record.data:
            return "pretrain"
        raise


def plan_run(run_dir: str, precision: str | None) -> Plan:
    from transformers import AutoTokenizer

    from tuneforge.methods import METHODS
    from tuneforge.models import load_model
    from tuneforge.runs import load_run, run_config

    cfg = run_config(run_dir)
    method = METHODS[cfg.method.name]
    # the run's saved chat template, for both models; remote code only when the run's config allowed it
    tokenizer = AutoTokenizer.from_pretrained(run_dir, trust_remote_code=cfg.trust_remote_code)
    candidates = [
        Candidate("base", lambda: load_model(cfg.model, cfg.trust_remote_code, quantize_4bit=method.quantized_base)),
        Candidate("tuned", lambda: load_run(run_dir)[0], packed=method.packing),
    ]
    info = {"kind": "run", "run": str(run_dir), "base_model": cfg.model, "method": cfg.method.name}
    cfg.training.precision = precision or cfg.training.precision
    return Plan(cfg, tokenizer, candidates, info)


def plan_model(model: str, first: Record, precision: str | None) -> Plan:
    from tuneforge.data.templates import apply_template
    from tuneforge.models import load_model, load_tokenizer

    stage = _detect_stage(first)
    cfg = Config.model_validate({"model": model, "stage": stage, "data": {"train": "-"}, "output_dir": "-",
                                 "training": {"precision": precision or "auto"}})
    tokenizer = load_tokenizer(model, cfg.trust_remote_code)
    if stage_info(stage).chat_template:
        apply_template(tokenizer, cfg.data.template)
    name = Path(model.rstrip("/")).name
    return Plan(cfg, tokenizer, [Candidate(name, lambda: load_model(model))],
                {"kind": "model", "base_model": model})


def _loss(model, examples, cfg: Config, precision: str, packed: bool, advance: Callable[[int], None]) -> dict:
    """evaluate_lm_loss over micro-batch-sized chunks (the same batches it would form) so progress can move."""
    total, count, step = 0.0, 0, cfg.training.batch_size
    for i in range(0, len(examples), step):
        part = evaluate_lm_loss(model, examples[i : i + step], cfg.training, precision, packed)
        total += part["loss"] * part["supervised_tokens"]
        count += part["supervised_tokens"]
        advance(len(examples[i : i + step]))
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "supervised_tokens": count}


def evaluate(req: Request) -> Path:
    """Run the evaluation `req` describes; return the output directory."""
    from tuneforge.evaluation.eval_report import write_outputs

    run = is_run_dir(req.target)
    if run:
        from tuneforge.runs import run_config

        stage = run_config(req.target).stage
        kind = stage_info(stage).model_kind
        if kind == "classifier":
            return evaluate_classifier(req)
        if kind == "scorer":
            raise ModelError(f"{req.target}: a {stage} run scores texts with one reward; eval scores a causal LM's "
                             "generations or a classifier's labels (use it as a ppo / grpo reward instead)")
    records, counted = first_rows(load_records(req.data), req.max_samples)
    plan = plan_run(req.target, req.precision) if run else plan_model(req.target, records[0], req.precision)
    cfg, tokenizer = plan.cfg, plan.tokenizer
    bound_kernel_caches(cfg.training.kernel_cache_entries)  # as training does, before the first bf16 matmul
    names = req.metrics or default_metrics(cfg.stage)
    want_loss, gen_metrics = split_metrics(names, cfg.stage)
    output = Path(req.output) if req.output else default_output(req)
    cfg.data.format = "auto"  # the eval file need not share the training file's format
    cfg.eval.generate_samples = len(records)
    max_new_tokens = req.max_new_tokens or cfg.eval.max_new_tokens
    examples, stats = load_examples(rows_config(cfg), tokenizer, req.data, records) if want_loss else ([], None)
    items = generation_items(cfg, tokenizer, records) if gen_metrics else []
    device = for_command(req.device, cfg.training.device)  # --device, else the run's training.device
    precision = resolve_precision(cfg.training.precision, device)

    results: dict[str, dict] = {}
    outputs: dict[str, list[str]] = {}
    with _progress() as progress:
        for cand in plan.candidates:
            task = progress.add_task(f"{cand.name}: loading", total=len(examples) + len(items))
            start = time.perf_counter()
            model = cand.load()
            if device.type != "cpu" and not getattr(model, "is_loaded_in_4bit", False):  # bnb places a 4-bit base
                model.to(device)
            metrics: dict = {}
            if examples:
                progress.update(task, description=f"{cand.name}: loss")
                metrics.update(_loss(model, examples, cfg, precision, cand.packed, partial(progress.advance, task)))
            if items:
                progress.update(task, description=f"{cand.name}: generating")
                outputs[cand.name] = generate(model, tokenizer, [i.prompt_ids for i in items], max_new_tokens,
                                              precision, on_batch=partial(progress.advance, task))
                metrics.update(compute(gen_metrics, outputs[cand.name], [i.reference or "" for i in items]))
            metrics["seconds"] = time.perf_counter() - start
            results[cand.name] = metrics
            del model
            gc.collect()

    generations = [{"question": it.question, "prompt": it.prompt, "reference": it.reference,
                    **{n: outputs[n][k] for n in outputs}}
                   for k, it in enumerate(items)]
    summary = {**plan.info, "target": req.target, "stage": cfg.stage, "data": req.data, **counted,
               "loss_samples": stats.summary() if stats else None, "generated": len(items),
               "metrics": names, "precision": precision, "max_new_tokens": max_new_tokens,
               "chat_template": getattr(tokenizer, "chat_template", None), "models": results}
    write_outputs(output, summary, generations)
    return output


def _progress():
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True))
