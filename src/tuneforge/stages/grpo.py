"""GRPO (Shao et al. 2024, DeepSeekMath) through TRL's GRPOTrainer: each prompt is sampled
`grpo.num_generations` times, every completion is scored by the `grpo.rewards` sources, and a completion's
advantage is its reward relative to its group's (mean, and / std with grpo.scale_rewards); no value model.

    tuneforge train grpo.yaml            # stage: grpo; docs/grpo.md has a config and measured figures

Batch arithmetic: training.batch_size counts *prompts* per micro-batch, so TRL's per_device_train_batch_size
(which counts completions) is batch_size x num_generations; one optimizer step sees batch_size x grad_accum
prompts, i.e. batch_size x grad_accum x num_generations completions, all generated in one go; with
num_iterations > 1 the same generations serve that many optimizer steps. training.max_steps counts optimizer
steps. The run is one process (TRL's multi-process path is not tested here).

Choices, and why:
- TRL gets the prompt already rendered (rl.prompts: the run's template, saved as template.json) and its token
  ids are handed over unchanged (`_tokenize_prompts`, trl 1.16), so a tokenizer that adds BOS does not add a
  second one and a left-truncated prompt is the one the data check reported.
- One TRL reward function per source (weights via reward_weights), so the log has each source's mean
  (rewards/<name>/mean) beside the weighted total (reward). A row's other columns reach the function by name.
- A reward source is called once on empty completions before anything is written: a missing column, a wrong
  count or a non-number is a config error (exit 2) naming grpo.rewards[i], not a crash mid-run.
- The reference for evaluation is the initial policy, restored by swapping the trainable weights with a copy
  taken before training (only the adapter for peft; every weight for full). It equals TRL's reference in every
  case (TRL: a copy of the initial adapter for a peft model with beta > 0, a second model for full / freeze)
  and also exists when beta = 0, where TRL keeps none. Evaluation KL is per completion (sum over its tokens of
  log p - log p_ref on the policy's own samples); TRL's per-step `kl` is the mean per-token k3 estimate.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from datasets import Dataset
from transformers import PrinterCallback, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from tuneforge.config.load import dump_config
from tuneforge.config.schema import Config
from tuneforge.data.dataset import load_train_eval_records
from tuneforge.errors import ConfigError, UserError
from tuneforge.fsutil import write_json_atomic, write_text_atomic
from tuneforge.methods import METHODS, MethodContext, count_params
from tuneforge.models import load_model, load_tokenizer, resolve_model
from tuneforge.report.rl import (
    plot_reward_kl,
    question,
    samples_table,
    summary,
    template_name,
    write_rl_report,
)
from tuneforge.rl.policy_eval import evaluate_policy
from tuneforge.rl.prompts import PromptExample, load_prompt_examples
from tuneforge.rl.rewards import Rewards, load_rewards
from tuneforge.stages.lm import _save_model, check_config, cost_metrics, prepare_output_dir_once, start_ranks
from tuneforge.train import distributed as ddp
from tuneforge.train import hf_bridge as hf
from tuneforge.train.checkpoint import run_guards
from tuneforge.train.loop import TrainResult
from tuneforge.train.precision import resolve_precision

KEY = "grpo.rewards"


def to_grpo_config(cfg: Config, out: Path, precision: str) -> GRPOConfig:
    g, t = cfg.grpo, cfg.training
    args = hf.to_trainer_args(cfg, out, precision)
    completions = t.batch_size * g.num_generations  # TRL's batch sizes count completions, ours prompts
    args |= {"per_device_train_batch_size": completions, "per_device_eval_batch_size": completions}
    return GRPOConfig(
        **args, num_generations=g.num_generations, beta=g.beta, epsilon=g.epsilon, num_iterations=g.num_iterations,
        scale_rewards="group" if g.scale_rewards else "none", max_completion_length=g.max_new_tokens,
        temperature=g.temperature, top_p=g.top_p, top_k=g.top_k, reward_weights=[s.weight for s in g.rewards],
        remove_unused_columns=False,  # the `index` column leads reward functions back to the prompt's row
        log_completions=False,
        generation_kwargs={"use_cache": True},  # load_model turns the config's cache off (packed training)
    )


class Counter:
    """Real tokens of the generated batches (prompt + completion, no padding), counted as TRL scores them."""

    def __init__(self) -> None:
        self.tokens = self.completion_tokens = 0


def to_reward_funcs(rewards: Rewards, examples: list[PromptExample], counter: Counter) -> list[Callable]:
    """One TRL reward function per source; each hands the source its rows' PromptExamples (prompt + columns)."""
    funcs = []
    for i, source in enumerate(rewards.sources):

        def fn(prompts, completions, completion_ids, index, _source=source, _first=i == 0, **_) -> list[float]:
            rows = [examples[j] for j in index]
            if _first:
                counter.completion_tokens += sum(map(len, completion_ids))
                counter.tokens += sum(len(r.input_ids) for r in rows) + sum(map(len, completion_ids))
            return _source.score(rows, completions)

        fn.__name__ = source.name  # TRL logs rewards/<__name__>/mean
        funcs.append(fn)
    return funcs


class PromptIdsTrainer(GRPOTrainer):
    """GRPOTrainer generating from the prompt ids rl.prompts made (module docstring)."""

    def __init__(self, *args, prompt_ids: dict[str, list[int]], **kwargs) -> None:
        self._prompt_ids = prompt_ids
        super().__init__(*args, **kwargs)

    def _tokenize_prompts(self, prompts: list):  # trl 1.16: (prompt_ids, images, multimodal_fields)
        return [self._prompt_ids[p] for p in prompts], None, {}


def check_rewards(rewards: Rewards, examples: list[PromptExample]) -> None:
    """Every source once on empty completions (a policy may stop at once): wrong outputs fail now, exit 2."""
    rows = examples[:2]
    rewards.breakdown(rows, [""] * len(rows))


@contextlib.contextmanager
def initial_weights(model: torch.nn.Module, initial: dict[str, torch.Tensor]) -> Iterator[None]:
    """`model` acts as the initial policy (the reference) inside the block."""
    params = dict(model.named_parameters())
    current = {name: params[name].detach().clone() for name in initial}
    with torch.no_grad():
        for name, value in initial.items():
            params[name].copy_(value)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, value in current.items():
                params[name].copy_(value)


class EvalCallback(TrainerCallback):
    """Every training.eval_steps: evaluate the policy on the eval prompts; `on_eval` sees it (hpo prunes)."""

    def __init__(self, evaluate: Callable[[], dict], every: int | None, on_eval: Callable | None) -> None:
        self.evaluate, self.every, self.on_eval = evaluate, every, on_eval
        self.evals: list[dict] = []
        self.seconds = 0.0

    def on_step_end(self, args, state, control, **kwargs):
        if not self.every or state.global_step % self.every or state.global_step == state.max_steps:
            return
        started = time.perf_counter()
        result = {"step": state.global_step, **summary(self.evaluate())}
        self.seconds += time.perf_counter() - started
        self.evals.append(result)
        if self.on_eval:
            self.on_eval(state.global_step, result)


def to_record(entry: dict, names: list[str]) -> dict:
    """One train_log.jsonl line from a TRL log entry."""
    record = {"step": entry["step"], "loss": entry["loss"], "reward": entry.get("reward"),
              "reward_std": entry.get("reward_std"), "kl": entry.get("kl"),  # TRL logs kl only when beta > 0
              "clip_ratio": entry.get("clip_ratio/region_mean"), "entropy": entry.get("entropy"),
              "length_mean": entry.get("completions/mean_length"), "lr": entry.get("lr"),
              "grad_norm": entry.get("grad_norm"), "seconds": entry.get("step_time")}
    if len(names) > 1:
        record |= {f"reward/{n}": entry.get(f"rewards/{n}/mean") for n in names}
    return record


def plot_steps(history: list[dict], path: Path) -> None:
    plot_reward_kl(history, path, "reward", "kl", "optimizer step", "mean reward (train batch)",
                   "KL to reference\n(per token, k3)")


def _section(before: dict, after: dict, cfg: Config, questions: list[str]) -> str:
    lines = ["## GRPO", "", "![reward and KL per step](rewards.png)", ""]
    title = f"Sampled completions on eval prompts (temperature {cfg.grpo.temperature}, seed {cfg.seed})"
    return "\n".join(lines + samples_table(before, after, questions, title))


def load_policy(cfg: Config) -> torch.nn.Module:
    method = METHODS[cfg.method.name]
    model = load_model(cfg.model, cfg.trust_remote_code, quantize_4bit=method.quantized_base)
    ctx = MethodContext(model_path=resolve_model(cfg.model), gradient_checkpointing=cfg.training.gradient_checkpointing)
    return method.apply(model, cfg.method, ctx)


def run(cfg: Config, log: Callable[[str], None] = print, *, on_eval: Callable[[int, dict], None] | None = None) -> Path:
    wall_start = time.perf_counter()
    log = start_ranks(log)
    check_config(cfg)
    if ddp.world_size() > 1:
        raise ConfigError("stage grpo runs in one process (no --nproc / torchrun)")
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    rewards = load_rewards(cfg.grpo.rewards, KEY)  # imports functions, loads reward runs: fails before any write
    train_records, eval_records = load_train_eval_records(cfg, log)
    examples, train_stats = load_prompt_examples(cfg, tokenizer, train_records)
    eval_examples, eval_stats = (load_prompt_examples(cfg, tokenizer, eval_records[: cfg.eval.max_samples])
                                 if eval_records else ([], None))
    check_rewards(rewards, examples)
    resumed_from = hf.resume_checkpoint(cfg, Path(cfg.output_dir))  # a checkpoint of another run is refused here
    data_stats = {split: {**stats, "dropped_no_supervised": 0} for split, stats in
                  (("train", train_stats), ("eval", eval_stats)) if stats}
    log(f"data: {len(examples)} train / {len(eval_examples)} eval prompts ({train_stats['truncated']} truncated); "
        f"{cfg.training.batch_size} prompts x {cfg.grpo.num_generations} completions per micro-batch")

    out = prepare_output_dir_once(cfg)  # nothing is written before every input above checked out
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    precision = resolve_precision(cfg.training.precision)
    model = load_policy(cfg)
    trainable, total = count_params(model)
    log(f"method {cfg.method.name}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.3f}%)")
    initial = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def evaluate(reference: bool = True) -> dict:
        ref = (lambda: initial_weights(model, initial)) if reference else None  # before training: KL is 0
        return evaluate_policy(model, tokenizer, eval_examples, rewards, cfg.grpo, reference=ref, seed=cfg.seed,
                               batch_size=cfg.training.batch_size * cfg.grpo.num_generations, precision=precision)

    before_file = out / "eval_before.json"  # computed once, so a resumed run reports the same start
    if cfg.eval.before and eval_examples and not before_file.is_file():
        log("evaluating the initial policy ...")
        write_json_atomic(before_file, evaluate(reference=False))
    eval_before = json.loads(before_file.read_text()) if before_file.is_file() else {}

    counter, guard = Counter(), hf.GuardCallback(cfg.training.max_bad_steps, guards=run_guards(cfg))
    evals = EvalCallback(evaluate, cfg.training.eval_steps if eval_examples else None, on_eval)
    dataset = Dataset.from_dict({"prompt": [e.text for e in examples], "index": list(range(len(examples)))})
    callbacks = [evals, guard, hf.MetricLogCallback(cfg, out)]  # the order hf_bridge asks for
    trainer = PromptIdsTrainer(
        model=model, args=to_grpo_config(cfg, out, precision), reward_funcs=to_reward_funcs(rewards, examples, counter),
        train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks,
        prompt_ids={e.text: e.input_ids for e in examples})
    trainer.remove_callback(PrinterCallback)  # with the progress bar off it prints every log dict to stdout
    if resumed_from:
        log(f"resuming from {resumed_from}")
    first_step = int(resumed_from.rsplit("-", 1)[1]) if resumed_from else 0
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resumed_from)
    train_seconds = time.perf_counter() - started - evals.seconds  # this session's steps, without evaluation
    guard.raise_if_stopped()

    history = [to_record(h, rewards.names) for h in hf.history_of(trainer)]
    eval_after = evaluate() if eval_examples else {}
    if "ref" in getattr(model, "peft_config", {}):  # TRL's copy of the initial adapter (beta > 0): not ours to save
        model.delete_adapter("ref")
    if not all(torch.isfinite(p).all() for p in model.parameters() if p.requires_grad):
        raise UserError("refusing to save non-finite weights")
    _save_model(model, tokenizer, out, METHODS[cfg.method.name])
    write_json_atomic(out / "template.json", {"template": template_name(cfg, tokenizer),
                                              "chat_template": tokenizer.chat_template, "system_prompt": cfg.data.system_prompt})
    result = TrainResult(trainer.state.global_step, history, evals.evals, counter.tokens, counter.completion_tokens,
                         train_seconds, resumed_from)
    train_block = cost_metrics(result, wall_start, model, trainable, total, precision, "completion_tokens")
    metrics = {
        "model": cfg.model, "stage": cfg.stage, "method": cfg.method.name,
        "eval_before": summary(eval_before), "eval_after": summary(eval_after),
        "train": {**train_block, "seconds_per_step": train_seconds / max(trainer.state.global_step - first_step, 1),
                  "skipped_steps": guard.skipped, "completions_per_step": cfg.training.batch_size
                  * cfg.training.grad_accum * cfg.grpo.num_generations},
        "evals": evals.evals,
        "data": data_stats,
    }
    write_text_atomic(out / "train_log.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    write_rl_report(out, metrics, history, eval_before, eval_after, dump_config(cfg),
                    _section(eval_before, eval_after, cfg, [question(e) for e in eval_examples]), ("rewards.png", plot_steps))
    return out
