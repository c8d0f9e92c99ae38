"""Direct preference optimisation (TRL DPOTrainer) on preference rows: `prompt` (optional) + `chosen` +
`rejected`, strings or chat messages, as the reward stage reads them. With a PEFT method the reference is
the policy with its adapter disabled (no second model in memory); with full / freeze TRL keeps a frozen copy.

    tuneforge train dpo.yaml            # stage: dpo; docs/dpo.md has a config and measured figures

Rows are rendered with the run's chat template (the one saved in template.json) and tokenized here, not by
TRL: the prompt exactly as chat / serve tokenize it, each response through its end-of-turn EOS (what the
template puts after it is not trained, as in sft), over-length pairs by training.overlength. The same ids
feed training and the before / after metrics, which this module computes from summed response log-probs
of policy and reference (not from TRL's logs): DPO loss, reward accuracy and margins, logp accuracy.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PrinterCallback, TrainerCallback

from tuneforge.config.load import dump_config
from tuneforge.config.schema import Config, DpoConfig
from tuneforge.data.dataset import load_train_eval_records
from tuneforge.data.dpo_pairs import (  # noqa: F401 (the names stay importable from here)
    DpoExample,
    _fit,
    _response_ids,
    _turns,
    load_dpo_examples,
    to_example,
)
from tuneforge.data.preference import use_template
from tuneforge.data.templates import ALPACA_TEMPLATE
from tuneforge.errors import ConfigError
from tuneforge.fsutil import write_json_atomic, write_text_atomic
from tuneforge.methods import METHODS, MethodContext, count_params
from tuneforge.models import load_model, load_tokenizer, resolve_model
from tuneforge.report.write import write_report
from tuneforge.stages.lm import _save_model, check_config, cost_metrics, prepare_output_dir_once
from tuneforge.stages.reward import plot_margins
from tuneforge.train import hf_bridge
from tuneforge.train.checkpoint import run_guards
from tuneforge.train.loop import TrainResult
from tuneforge.train.precision import autocast, resolve_precision


def _collate(examples: list[DpoExample]) -> dict:
    """TRL's own collator: the batch layout training sees ([chosen..., rejected...], right padding)."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    return DataCollatorForPreference(pad_token_id=0)([e.row() for e in examples])


@torch.no_grad()
def response_logps(model, examples: list[DpoExample], batch_size: int, precision: str) -> tuple[torch.Tensor, ...]:
    """(chosen, rejected, chosen_tokens, rejected_tokens), each [n]: summed log-probs of each response's tokens
    given the prompt, and the response lengths. Padding and prompt positions are not counted."""
    was_training = model.training
    model.eval()
    columns: list[list[torch.Tensor]] = [[], [], [], []]
    for i in range(0, len(examples), batch_size):
        batch = _collate(examples[i : i + batch_size])
        with autocast(precision):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        mask = batch["completion_mask"][:, 1:].bool()  # position t predicts token t + 1
        picked = F.log_softmax(logits[:, :-1][mask].float(), dim=-1)  # a softmax only where a response token is
        token_logps = picked.gather(-1, batch["input_ids"][:, 1:][mask].unsqueeze(-1)).squeeze(-1)
        rows = torch.arange(mask.size(0)).unsqueeze(1).expand_as(mask)[mask]
        summed = torch.zeros(mask.size(0)).index_add_(0, rows, token_logps)
        for column, part in zip(columns, (*summed.chunk(2), *mask.sum(1).chunk(2)), strict=True):
            column.append(part)  # the batch is [chosen..., rejected...]
    model.train(was_training)
    return tuple(torch.cat(c) for c in columns)


def dpo_loss(delta: torch.Tensor, chosen_avg_delta: torch.Tensor, dcfg: DpoConfig) -> torch.Tensor:
    """Per-pair loss as TRL 1.16's DPOTrainer computes it. `delta`: (logpi_c - logref_c) - (logpi_r - logref_r);
    `chosen_avg_delta`: the same with each response's log-ratio divided by its length (IPO)."""
    beta, eps = dcfg.beta, dcfg.label_smoothing
    if dcfg.loss_type == "hinge":
        return torch.relu(1 - beta * delta)
    if dcfg.loss_type == "ipo":
        return (chosen_avg_delta - 1 / (2 * beta)) ** 2
    if eps:  # robust DPO (TRL's "robust"): eps is the chance that a pair's label is flipped
        return (-(1 - eps) * F.logsigmoid(beta * delta) + eps * F.logsigmoid(-beta * delta)) / (1 - 2 * eps)
    return -F.logsigmoid(beta * delta)


def to_trl_loss_type(dcfg: DpoConfig) -> str:
    return "robust" if dcfg.loss_type == "sigmoid" and dcfg.label_smoothing else dcfg.loss_type


def dpo_metrics(policy: tuple[torch.Tensor, ...], reference: tuple[torch.Tensor, ...], dcfg: DpoConfig) -> dict:
    """Eval-set metrics from response log-probs (see response_logps) of the policy and the reference."""
    pc, pr, nc, nr = policy
    rc, rr = reference[:2]
    chosen_reward, rejected_reward = dcfg.beta * (pc - rc), dcfg.beta * (pr - rr)
    margin = chosen_reward - rejected_reward
    avg_delta = (pc - rc) / nc.clamp(min=1) - (pr - rr) / nr.clamp(min=1)
    return {"loss": float(dpo_loss(margin / dcfg.beta, avg_delta, dcfg).mean()),
            "reward_accuracy": float((margin > 0).float().mean()), "reward_margin": float(margin.mean()),
            "chosen_reward": float(chosen_reward.mean()), "rejected_reward": float(rejected_reward.mean()),
            "logp_accuracy": float((pc > pr).float().mean()),
            "chosen_logp": float(pc.mean()), "rejected_logp": float(pr.mean()), "pairs": int(pc.numel())}


@dataclass
class _Counter:
    """Real (attention-mask) tokens and pairs of the batches training consumed (counted in training_step: the
    dataloader looks one batch ahead, so counting in the collator would overcount)."""

    tokens: int = 0
    pairs: int = 0


class _StepStats(TrainerCallback):
    """Real tokens, pairs and seconds of each optimizer step (batches are fetched after the previous step
    ended), and the periodic evaluation (training.eval_steps) with this module's metrics."""

    def __init__(self, counter: _Counter, evaluate: Callable[[], dict] | None, eval_steps: int | None,
                 metric_log: hf_bridge.MetricLogCallback, on_eval: Callable[[int, dict], None] | None) -> None:
        self.counter, self.evaluate, self.eval_steps = counter, evaluate, eval_steps
        self.metric_log, self.on_eval = metric_log, on_eval
        self.steps: dict[int, dict] = {}
        self.evals: list[dict] = []
        self._mark = (time.perf_counter(), 0, 0)

    def on_train_begin(self, args, state, control, **kwargs):
        self._mark = (time.perf_counter(), self.counter.tokens, self.counter.pairs)

    def on_step_end(self, args, state, control, **kwargs):
        started, tokens, pairs = self._mark
        self.steps[state.global_step] = {"tokens": self.counter.tokens - tokens, "pairs": self.counter.pairs - pairs,
                                         "seconds": time.perf_counter() - started}
        if self.evaluate and self.eval_steps and state.global_step % self.eval_steps == 0:
            result = self.evaluate()
            self.evals.append({"step": state.global_step, **result})
            for key, value in result.items():
                if self.metric_log.writer is not None:
                    self.metric_log.writer.add_scalar(f"eval/{key}", value, state.global_step)
            if self.on_eval:
                self.on_eval(state.global_step, result)
        self._mark = (time.perf_counter(), self.counter.tokens, self.counter.pairs)  # evaluation is not training


def _trainer_class():
    from trl import DPOTrainer

    class PreTokenizedDPOTrainer(DPOTrainer):
        """Rows arrive tokenized by load_dpo_examples (prompt_ids / chosen_ids / rejected_ids), so TRL 1.16's
        own tokenization (which re-renders and appends EOS after the template's trailing newline) is skipped."""

        counter: _Counter | None = None

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

        def training_step(self, model, inputs, *args, **kwargs):
            if self.counter is not None:
                self.counter.tokens += int(inputs["attention_mask"].sum())
                self.counter.pairs += inputs["input_ids"].size(0) // 2  # rows are [chosen..., rejected...]
            return super().training_step(model, inputs, *args, **kwargs)

    return PreTokenizedDPOTrainer


def build_trainer(cfg: Config, model, tokenizer, examples: list[DpoExample], out: Path, precision: str,
                  callbacks: list[TrainerCallback], counter: _Counter | None = None):
    """DPOTrainer on a model the method was already applied to. PEFT: ref_model None, and the reference is
    the adapter-disabled policy (TRL 1.16 would copy a pre-wrapped model's adapter as a 'ref' adapter; for
    zero-initialised adapters that is the base again, so the copy is dropped; PiSSA keeps it, because its
    adapter-disabled model is the residual, not the base). Full / freeze: TRL loads a frozen copy."""
    from datasets import Dataset
    from trl import DPOConfig

    dcfg = cfg.dpo
    args = DPOConfig(**hf_bridge.to_trainer_args(cfg, out, precision), beta=dcfg.beta,
                     loss_type=[to_trl_loss_type(dcfg)], label_smoothing=dcfg.label_smoothing,
                     max_length=cfg.training.max_length, trust_remote_code=cfg.trust_remote_code,
                     disable_dropout=True)  # policy and reference must score alike (TRL's default)
    trainer = _trainer_class()(model=model, ref_model=None, args=args, processing_class=tokenizer,
                               train_dataset=Dataset.from_list([e.row() for e in examples]), callbacks=callbacks)
    trainer.counter = counter
    if "ref" in getattr(model, "peft_config", {}) and getattr(cfg.method, "init", "default") != "pissa":
        model.delete_adapter("ref")
    trainer.remove_callback(PrinterCallback)  # with the progress bar off it prints every log dict to stdout
    return trainer


def reference_of(model, trainer):
    """(context-manager factory, module): under the context, the module scores as the reference."""
    if trainer.ref_model is not None:
        return nullcontext, trainer.ref_model
    if "ref" in model.peft_config:
        from trl.trainer.utils import use_adapter

        return (lambda: use_adapter(model, "ref")), model
    return model.disable_adapter, model


def _eval_before(model, eval_examples: list[DpoExample], cfg: Config, out: Path, precision: str,
                 log: Callable[[str], None]) -> tuple[dict, tuple[torch.Tensor, ...] | None]:
    """The base (policy == reference) scored once and kept in eval_before.json, so a resumed run reports the
    same base; its log-probs are the reference's for the periodic evaluations."""
    if not eval_examples:
        return {}, None
    before_file = out / "eval_before.json"
    if not before_file.is_file():
        log("scoring the eval pairs with the base model ...")
        base = response_logps(model, eval_examples, cfg.training.batch_size, precision)
        write_json_atomic(before_file, {"metrics": dpo_metrics(base, base, cfg.dpo),
                                        "logps": [t.tolist() for t in base]})
    saved = json.loads(before_file.read_text())
    return (saved["metrics"] if cfg.eval.before else {}), tuple(torch.tensor(v) for v in saved["logps"])


def _section() -> str:
    return "\n".join(["## DPO", "", "Implicit reward r = beta * (log pi(response) - log ref(response)), summed over "
                      "the response tokens; the reference is the base model, so every margin is 0 before training. "
                      "reward_accuracy: share of eval pairs with r(chosen) > r(rejected); logp_accuracy: share where "
                      "the policy itself gives the chosen response the higher log-probability.", "",
                      "![implicit reward margins on the eval pairs](margins.png)"])


def _template_name(tokenizer, templated: bool) -> str | None:
    return ("alpaca" if tokenizer.chat_template == ALPACA_TEMPLATE else "chat") if templated else None


def check_dpo_config(cfg: Config) -> None:
    check_config(cfg)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("stage 'dpo' runs in one process (TRL DPOTrainer); run it without --nproc / torchrun")
    if cfg.dpo.label_smoothing and cfg.dpo.loss_type != "sigmoid":
        raise ConfigError(f"key 'dpo.label_smoothing': applies to loss_type sigmoid (robust DPO), not "
                          f"{cfg.dpo.loss_type!r}; set it to 0")


def run(cfg: Config, log: Callable[[str], None] = print, *, on_eval: Callable[[int, dict], None] | None = None) -> Path:
    """`on_eval(step, result)` sees every periodic evaluation (tuneforge hpo prunes from it)."""
    wall_start = time.perf_counter()
    check_dpo_config(cfg)
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    train_records, eval_records = load_train_eval_records(cfg, log)
    train_examples, train_stats = load_dpo_examples(cfg, tokenizer, train_records)
    eval_examples, eval_stats = (load_dpo_examples(cfg, tokenizer, eval_records[: cfg.eval.max_samples])
                                 if eval_records else ([], None))
    template = _template_name(tokenizer, use_template(cfg, tokenizer))
    data_stats = {"train": train_stats.summary(), **({"eval": eval_stats.summary()} if eval_stats else {})}
    log(f"data: {len(train_examples)} train / {len(eval_examples)} eval pairs, template {template or 'none'} "
        f"({train_stats.dropped_identical} identical dropped, {train_stats.truncated} truncated)")

    resumed_from = hf_bridge.resume_checkpoint(cfg, Path(cfg.output_dir))  # a checkpoint of another run: refused
    out = prepare_output_dir_once(cfg)  # nothing is written before every input above checked out
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    precision = resolve_precision(cfg.training.precision)
    method = METHODS[cfg.method.name]
    model = load_model(cfg.model, cfg.trust_remote_code, quantize_4bit=method.quantized_base)
    eval_before, base_logps = _eval_before(model, eval_examples, cfg, out, precision, log)
    ctx = MethodContext(model_path=resolve_model(cfg.model), gradient_checkpointing=cfg.training.gradient_checkpointing)
    model = method.apply(model, cfg.method, ctx)
    trainable, total = count_params(model)
    log(f"method {cfg.method.name}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.3f}%)")

    bs = cfg.training.batch_size
    counter = _Counter()
    guard, metric_log = (hf_bridge.GuardCallback(cfg.training.max_bad_steps, run_guards(cfg)),
                          hf_bridge.MetricLogCallback(cfg, out))
    evaluate = (lambda: dpo_metrics(response_logps(model, eval_examples, bs, precision), base_logps, cfg.dpo)) \
        if eval_examples else None
    stats = _StepStats(counter, evaluate, cfg.training.eval_steps, metric_log, on_eval)
    callbacks = [stats, guard, metric_log]  # the guard after the evaluation (a signal there stops this step)
    trainer = build_trainer(cfg, model, tokenizer, train_examples, out, precision, callbacks, counter)
    if resumed_from:
        log(f"resuming from {resumed_from}")
    trainer.train(resume_from_checkpoint=resumed_from)
    guard.raise_if_stopped()

    eval_after, margins = {}, {}
    if eval_examples:
        log("scoring the eval pairs with the tuned model and the reference ...")
        policy = response_logps(model, eval_examples, bs, precision)
        as_reference, reference = reference_of(model, trainer)
        with as_reference():
            ref = response_logps(reference, eval_examples, bs, precision)
        eval_after = dpo_metrics(policy, ref, cfg.dpo)
        margins = {"tuned": (cfg.dpo.beta * ((policy[0] - ref[0]) - (policy[1] - ref[1]))).tolist()}
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")  # only the trained adapter is the run's
    _save_model(model, tokenizer, out, method)
    write_json_atomic(out / "template.json", {"template": template, "chat_template": tokenizer.chat_template,
                                              "system_prompt": cfg.data.system_prompt})
    history = [{**h, **stats.steps.get(h["step"], {})} for h in hf_bridge.history_of(trainer)]
    write_text_atomic(out / "train_log.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    metrics = {"model": cfg.model, "stage": cfg.stage, "method": cfg.method.name, "dpo": cfg.dpo.model_dump(),
               "eval_before": eval_before or None, "eval_after": eval_after,
               "train": _cost(trainer, stats, len(guard.skipped), wall_start, model, trainable, total, precision,
                             resumed_from),
               "evals": stats.evals, "data": data_stats}
    extra = ""
    if eval_after:
        plot_margins({"base (= reference)": [0.0] * len(eval_examples), **margins}, out / "margins.png")
        extra = _section()
    write_report(out, metrics, [], history, stats.evals, dump_config(cfg), extra=extra)
    return out


def _cost(trainer, stats: _StepStats, skipped: int, wall_start: float, model, trainable: int, total: int,
          precision: str, resumed_from: str | None) -> dict:
    """metrics.json's `train` block for the steps this process ran (a resumed run counts from its checkpoint)."""
    tokens, pairs = stats.counter.tokens, stats.counter.pairs
    result = TrainResult(trainer.state.global_step, hf_bridge.history_of(trainer), stats.evals, tokens, pairs,
                         sum(s["seconds"] for s in stats.steps.values()), resumed_from)
    cost = cost_metrics(result, wall_start, model, trainable, total, precision, "pairs")
    emb = model.get_input_embeddings().weight.numel()
    cost["model_flops"] += 2.0 * (total - emb) * tokens  # plus the reference's forward pass
    cost["nonfinite_steps_skipped"] = skipped
    return cost
