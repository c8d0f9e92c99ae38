"""The flow every stage shares, public and written once: set-up (config checks, tokenizer, checked data,
output directory, seed, precision), the base model and the method (head-aware, gradient checkpointing
honoured), the base evaluated once (eval_before.json, one shape for every stage), and the finish (non-finite
check, save, template.json, train_log.jsonl, metrics.json, report.md). A stage file keeps only what is its
own: its examples' objective, its metrics and its report section.

    run = begin(cfg, log)                       # checks, tokenizer; nothing written yet
    data = load_data(run)                       # data.train, data.eval, data.summary
    out = open_output(run)                      # output_dir, config.yaml, seed, precision
    model = load_base(run)                      # + labels= for a classifier / scorer head
    before, details = eval_before(run, lambda: (metrics, details_to_keep))
    model, counts = apply_method(run, model)
    ...train...
    finish(run, model, Outcome(result, counts, before, after, data.summary, ...))

Under torchrun every rank runs this flow; rank 0 alone evaluates and writes (`run.main`).
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tuneforge.config.checks import check_config
from tuneforge.config.load import dump_config, load_config
from tuneforge.config.schema import Config
from tuneforge.data.stage_data import StageData, counts_line, load_stage_data
from tuneforge.device import place
from tuneforge.device import select as select_device
from tuneforge.errors import ConfigError, NonFiniteLoss
from tuneforge.evaluation.base_cache import cached_or_computed
from tuneforge.fsutil import make_temp_dir, move_dir_contents, write_json_atomic, write_text_atomic
from tuneforge.methods import METHODS, Method, MethodContext, count_params
from tuneforge.models import load_model, load_tokenizer, resolve_model
from tuneforge.models.classifier import load_base_classifier
from tuneforge.report.learning import verdict_for_run, warning_text
from tuneforge.report.write import write_report
from tuneforge.stage_info import StageInfo, stage_info
from tuneforge.train import contention, wall
from tuneforge.train import distributed as ddp
from tuneforge.train.cost import cost_block
from tuneforge.train.guards import check_resume_config, saved_precision
from tuneforge.train.kernel_cache import bound_kernel_caches
from tuneforge.train.loop import TrainResult
from tuneforge.train.precision import resolve_precision
from tuneforge.train.recipe import apply_recipe

HEADS = ("classifier", "score")  # the new head's module name in transformers' *ForSequenceClassification


@dataclass
class StageRun:
    """One stage run in progress: what every step of the skeleton needs."""

    cfg: Config
    info: StageInfo
    log: Callable[[str], None]
    tokenizer: object
    method: Method
    wall_start: float = field(default_factory=time.perf_counter)
    out: Path | None = None
    precision: str = "fp32"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # training.device, resolved
    recipe: dict = field(default_factory=dict)  # what train.recipe chose for the keys the config left open
    cpu_start: contention.Sample | None = None  # begin's sample: other processes' CPU use is judged from it

    @property
    def main(self) -> bool:
        return ddp.is_main()


def begin(cfg: Config, log: Callable[[str], None] = print) -> StageRun:
    """Join the process group if launched distributed (other ranks log nothing), check the config, load the
    tokenizer. Nothing is written."""
    wall_start, cpu_start = wall.start(), contention.sample()  # (wall.start: a resume adds earlier processes' seconds)
    info = stage_info(cfg.stage)
    check_config(cfg)
    caches = bound_kernel_caches(cfg.training.kernel_cache_entries)  # before the first matmul (precision probe)
    device = select_device(cfg.training.device)  # exit 2 naming the key if this machine lacks it
    if info.distributed:
        ddp.init_from_env(device)
    log = log if ddp.is_main() else (lambda _msg: None)
    if device.type == "cpu" and caches:
        log("kernel caches: " + ", ".join(f"{k}={v}" for k, v in caches.items()) + " (training.kernel_cache_entries;"
            " the environment's values win)")
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    return StageRun(cfg, info, log, tokenizer, METHODS[cfg.method.name], wall_start, device=device, cpu_start=cpu_start)


def load_data(run: StageRun) -> StageData:
    """Checked train / eval records (eval held out of train by data.eval_split when there is no eval file),
    read once, through the stage's example builder: the same calls `tuneforge validate` makes.
    data.train / data.eval are the examples, data.summary metrics.json's data block. The keys the config left
    open (learning rate, epochs) are then chosen from the method and the data (train.recipe)."""
    data = load_stage_data(run.cfg, run.tokenizer, run.log)
    for split in data.summary:
        run.log("data: " + counts_line(split, data.summary[split]))
    run.recipe = apply_recipe(run.cfg, len(data.train), run.log, ddp.world_size())  # before config.yaml is written
    busy = contention.warning(run.cpu_start, contention.sample_after(run.cpu_start), torch.get_num_threads()) \
        if run.device.type == "cpu" and ddp.world_size() == 1 else None  # (ranks on one machine are not others)
    if busy:
        run.log(busy)
    return data


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


def _check_resume_config(path: Path, cfg: Config) -> None:
    try:
        saved = load_config(path)
    except ConfigError:  # written by another tuneforge version: the checkpoint's fingerprints still guard
        return
    check_resume_config(saved, cfg, path.parent / "checkpoints")


def open_output(run: StageRun) -> Path:
    """Rank 0 checks and creates output_dir and writes config.yaml (the others wait); then seed and precision.
    Call it after every input checked out: nothing is written before."""
    cfg = run.cfg
    out = Path(cfg.output_dir)
    if run.main:
        out = prepare_output_dir(cfg)
        if cfg.resume and (out / "config.yaml").is_file():
            _check_resume_config(out / "config.yaml", cfg)
        write_text_atomic(out / "config.yaml", dump_config(cfg))
    ddp.barrier()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    run.out, run.precision = out, resolve_precision(cfg.training.precision, run.device)
    if cfg.training.precision == "auto":
        run.precision = _auto_precision_kept(run, out)
    return out


def _auto_precision_kept(run: StageRun, out: Path) -> str:
    """precision auto on CPU is a timing probe (bf16 only where its matmuls are not slower), which can come out
    otherwise under load: a resumed run keeps the precision its checkpoint trained with, and every rank takes
    rank 0's choice, so one run never mixes bf16 and fp32 steps."""
    precision = run.precision
    if run.cfg.resume:
        saved = saved_precision(run.cfg.resume, out / "checkpoints")
        if saved is not None and saved != precision:
            run.log(f"resume: precision auto kept as {saved}, the checkpoint's (this start's probe chose {precision})")
            precision = saved
    return ddp.broadcast_object(precision)


def load_base(run: StageRun, labels: list[str] | None = None):
    """The base model (4-bit for a quantized method), with a new seeded head when `labels` is given; gradient
    checkpointing as training.gradient_checkpointing says, for every stage."""
    cfg = run.cfg
    quantize = run.method.quantized_base
    model = (load_base_classifier(cfg, labels, quantize) if labels is not None  # seeded: predict --base sees it
             else load_model(cfg.model, cfg.trust_remote_code, quantize_4bit=quantize, device=run.device,
                             may_spread=ddp.world_size() == 1))  # loaded straight onto the device
    place(model, run.device)  # the classifier (loaded on the CPU); no-op for what the load placed
    if cfg.training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model


def eval_before(run: StageRun, compute: Callable[[], tuple[dict, dict]], required: bool = False,
                key_parts: dict | None = None) -> tuple[dict, dict]:
    """(metrics, details) of the base, computed once and kept in eval_before.json as
    {"metrics": ..., "details": ...} (one shape for every stage), so a resumed run reports the same base.
    `compute` returns the metrics and whatever the stage keeps beside them (generations, margins, log-probs).
    Rank 0 only. With eval.before off nothing is computed, unless the stage `required` the details (dpo's
    reference log-probs); then the metrics are still left out of the report. With `key_parts` (what the stage
    evaluates) they may be an earlier run's (evaluation/base_cache.py)."""
    if not run.main or not (run.cfg.eval.before or required):
        return {}, {}
    path = run.out / "eval_before.json"
    if not path.is_file():
        write_json_atomic(path, cached_or_computed(run, compute, key_parts))
    saved = json.loads(path.read_text())
    return (saved["metrics"] if run.cfg.eval.before else {}), saved.get("details") or {}


def apply_method(run: StageRun, model) -> tuple[object, tuple[int, int]]:
    """The configured method on the base; a classifier / scorer head (new, so it always trains) is kept
    trainable whatever the method. Returns the model and (trainable, total) parameters."""
    cfg = run.cfg
    heads = tuple(name for name, _ in model.named_children() if name in HEADS) if run.info.has_labels else ()
    task_type = "SEQ_CLS" if run.info.has_labels else "CAUSAL_LM"
    ctx = MethodContext(model_path=resolve_model(cfg.model), task_type=task_type,
                        gradient_checkpointing=cfg.training.gradient_checkpointing, head_modules=heads)
    model = run.method.apply(model, cfg.method, ctx)
    trainable, total = count_params(model)
    run.log(f"method {cfg.method.name}: {trainable:,} trainable of {total:,} parameters "
            f"({100 * trainable / total:.3f}%)")
    return model, (trainable, total)


def check_finite(model) -> None:
    """Never save non-finite weights (every stage, whatever trained it)."""
    bad = [n for n, p in model.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
    if bad:
        raise NonFiniteLoss(f"trainable weights became non-finite ({bad[0]}, ...); the model was not saved")


def save_model(model, tokenizer, out: Path, method: Method | None = None) -> list[str]:
    """The method's own save (peft adapter, bottleneck adapter, or the whole model) plus the tokenizer with
    the chat template the run trained with, written to a temporary directory and moved into `out`.
    Returns the names of the weight files written."""
    tmp = make_temp_dir(out, ".final.")
    try:
        if method and method.save:
            method.save(model, tmp)
        else:  # peft: adapter_model.safetensors + adapter_config.json; full/freeze: the whole model
            model.save_pretrained(str(tmp))
        weights = sorted(p.name for p in tmp.iterdir() if p.suffix == ".safetensors")
        tokenizer.save_pretrained(str(tmp))
        move_dir_contents(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return weights


def cost_metrics(run: StageRun, result: TrainResult, model, counts: tuple[int, int]) -> dict:
    """metrics.json's `train` block; stage_info's loss_unit names what the loss averages over."""
    return cost_block(result, run.wall_start, model, counts, run.precision, run.info.loss_unit)


@dataclass
class Outcome:
    """What a stage hands to `finish` beside the model."""

    result: TrainResult
    counts: tuple[int, int]  # (trainable, total) parameters
    before: dict
    after: dict
    data: dict
    extra: dict = field(default_factory=dict)  # stage keys for metrics.json (labels, baselines, ...)
    cost: dict = field(default_factory=dict)  # additions to the train block
    generations: list[dict] = field(default_factory=list)
    section: str = ""  # the stage's own report section
    template: dict | None = None  # template.json's content (chat-template stages)


def finish(run: StageRun, model, outcome: Outcome) -> Path:
    """Rank 0: non-finite check, save (model, tokenizer, template.json), train_log.jsonl, metrics.json and
    report.md. Every rank then leaves the process group."""
    out, cfg = run.out, run.cfg
    if not run.main:
        ddp.shutdown()  # waits at a barrier until rank 0 has written everything
        return out
    check_finite(model)
    saved = save_model(model, run.tokenizer, out, run.method)
    if run.info.chat_template:
        write_json_atomic(out / "template.json", outcome.template or {})
    history = outcome.result.history
    write_text_atomic(out / "train_log.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    if outcome.generations:
        write_text_atomic(out / "generations.jsonl", "".join(json.dumps(g) + "\n" for g in outcome.generations))
    metrics = {
        "model": cfg.model, "stage": cfg.stage, "method": cfg.method.name, **outcome.extra,
        "eval_before": outcome.before or None,
        "eval_after": outcome.after,
        "train": cost_metrics(run, outcome.result, model, outcome.counts) | outcome.cost,
        "evals": outcome.result.evals,
        "data": outcome.data,
        "saved": saved,
        "recipe": run.recipe,
        "learning": verdict_for_run(cfg.training, run.info.metrics, history, outcome.result.evals, outcome.after),
    }
    if any(metrics["learning"][k] for k in ("under_learned", "diverged", "stuck")):
        run.log(warning_text(metrics["learning"]))
    write_report(out, metrics, outcome.generations, history, outcome.result.evals, dump_config(cfg),
                 extra=outcome.section)
    run.log(f"saved {', '.join(saved)} (a {saved_kind(saved)}), metrics.json and report.md in {out}")
    ddp.shutdown()
    return out


def saved_kind(weights: list[str]) -> str:
    if any(name.startswith("adapter_model") for name in weights):
        return "PEFT adapter; load it with peft.PeftModel.from_pretrained(base, output_dir)"
    if any(name.startswith("bottleneck") for name in weights):
        return "bottleneck adapter"
    return "whole model"
