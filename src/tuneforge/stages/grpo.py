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
- The reference for evaluation is the initial policy (rl.reference: the trainable weights copied before
  training and swapped in; only the adapter for peft, every weight for full). It equals TRL's reference in every
  case (TRL: a copy of the initial adapter for a peft model with beta > 0, a second model for full / freeze)
  and also exists when beta = 0, where TRL keeps none. Evaluation KL is per completion (sum over its tokens of
  log p - log p_ref on the policy's own samples); TRL's per-step `kl` is the mean per-token k3 estimate.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from transformers import PrinterCallback, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

import tuneforge.stages.skeleton as skeleton
from tuneforge.config.schema import Config
from tuneforge.data.trl_dataset import Column, trl_dataset
from tuneforge.report.rl import plot_reward_kl, question, samples_table, summary, template_name, write_samples
from tuneforge.rl.policy_eval import evaluate_policy
from tuneforge.rl.prompts import PromptExample
from tuneforge.rl.reference import InitialPolicy
from tuneforge.rl.rewards import Rewards, load_rewards
from tuneforge.train import hf_bridge as hf
from tuneforge.train.guards import run_guards
from tuneforge.train.loop import TrainResult
from tuneforge.train.preference import save_totals, totals_before

KEY = "grpo.rewards"


def to_grpo_config(cfg: Config, out: Path, precision: str) -> GRPOConfig:
    g, t = cfg.grpo, cfg.training
    args = hf.to_trainer_args(cfg, out, precision)
    completions = t.batch_size * g.num_generations  # TRL's batch sizes count completions, ours prompts
    args |= {"per_device_train_batch_size": completions, "per_device_eval_batch_size": completions}
    return GRPOConfig(
        **args, num_generations=g.num_generations, beta=g.beta, epsilon=g.epsilon, num_iterations=g.num_iterations,
        loss_type=g.loss_type, scale_rewards=g.scale_rewards, max_completion_length=g.max_new_tokens,
        importance_sampling_level="sequence" if g.loss_type == "luspo" else "token",  # luspo: the paper's setup
        temperature=g.temperature, top_p=g.top_p, top_k=g.top_k, reward_weights=[s.weight for s in g.rewards],
        remove_unused_columns=False,  # the `index` column leads reward functions back to the prompt's row
        log_completions=False,
        generation_kwargs={"use_cache": True},  # load_model turns the config's cache off (packed training)
    )


class Counter(TrainerCallback):
    """Real tokens of the generated batches (prompt + completion, no padding), counted as TRL scores them, and
    train seconds (evaluation excluded); with the totals of the checkpoint a resumed run started from (`before`),
    kept with each checkpoint, so a resumed run's figures count every process (train.preference's file)."""

    def __init__(self, before: dict | None = None, evals: EvalCallback | None = None) -> None:
        self.tokens = self.completion_tokens = 0
        self.before = before or {"tokens": 0, "completion_tokens": 0, "seconds": 0.0}
        self.evals, self.started = evals, time.perf_counter()

    def totals(self) -> dict:
        seconds = time.perf_counter() - self.started - (self.evals.seconds if self.evals else 0.0)
        return {"tokens": self.before["tokens"] + self.tokens, "seconds": self.before["seconds"] + seconds,
                "completion_tokens": self.before["completion_tokens"] + self.completion_tokens}

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_save(self, args, state, control, **kwargs):  # before GuardCallback's (it writes the manifest)
        save_totals(args, state, self.totals())


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
    """GRPOTrainer generating from the prompt ids rl.prompts made (module docstring), looked up by the row's
    `index` column: two rows may render to the same text with different ids (a user turn holding control tokens
    is escaped, a real turn is not), so the text cannot be the key."""

    def __init__(self, *args, prompt_ids: Sequence[list[int]], **kwargs) -> None:
        self._prompt_ids = prompt_ids
        self._batch_rows: list[int] = []
        super().__init__(*args, **kwargs)

    def _generate_and_score_completions(self, inputs):  # trl 1.16: the batch's rows, before prompts are tokenized
        self._batch_rows = [int(x["index"]) for x in inputs]
        return super()._generate_and_score_completions(inputs)

    def _tokenize_prompts(self, prompts: list):  # trl 1.16: (prompt_ids, images, multimodal_fields)
        if len(self._batch_rows) != len(prompts):
            raise RuntimeError("GRPO prompts arrived without their rows' index (trl's batch layout changed?)")
        return [self._prompt_ids[i] for i in self._batch_rows], None, {}


def check_rewards(rewards: Rewards, examples: list[PromptExample]) -> None:
    """Every source once on empty completions (a policy may stop at once): wrong outputs fail now, exit 2."""
    rows = examples[:2]
    rewards.breakdown(rows, [""] * len(rows))


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


def _section(before: list[dict], after: list[dict], cfg: Config, questions: list[str]) -> str:
    lines = ["## GRPO", "", "![reward and KL per step](rewards.png)", ""]
    title = f"Sampled completions on eval prompts (temperature {cfg.grpo.temperature}, seed {cfg.seed})"
    return "\n".join(lines + samples_table(before, after, questions, title))


def run(cfg: Config, log: Callable[[str], None] = print, *, on_eval: Callable[[int, dict], None] | None = None) -> Path:
    run = skeleton.begin(cfg, log)  # (one process: stage_info says grpo is not distributed)
    rewards = load_rewards(cfg.grpo.rewards, KEY)  # imports functions, loads reward runs: fails before any write
    data = skeleton.load_data(run)
    check_rewards(rewards, data.train)
    resumed_from = hf.resume_checkpoint(cfg, Path(cfg.output_dir))  # a checkpoint of another run is refused here
    run.log(f"{cfg.training.batch_size} prompts x {cfg.grpo.num_generations} completions per micro-batch")
    out = skeleton.open_output(run)
    model, counts = skeleton.apply_method(run, skeleton.load_base(run))
    reference = InitialPolicy(model)  # taken before a resume loads the checkpoint's weights

    def evaluate(with_reference: bool = True) -> dict:  # before training the policy is the reference: KL 0
        return evaluate_policy(model, run.tokenizer, data.eval, rewards, cfg.grpo, seed=cfg.seed,
                               reference=reference if with_reference else None,
                               batch_size=cfg.training.batch_size * cfg.grpo.num_generations, precision=run.precision)

    def initial() -> tuple[dict, dict]:
        result = evaluate(with_reference=False)
        return summary(result), {"samples": result["samples"]}

    before, details = skeleton.eval_before(run, initial) if data.eval else ({}, {})
    guard = hf.GuardCallback(cfg.training.max_bad_steps, guards=run_guards(cfg))
    evals = EvalCallback(evaluate, cfg.training.eval_steps if data.eval else None, on_eval)
    zero = {"tokens": 0, "completion_tokens": 0, "seconds": 0.0}
    counter = Counter(totals_before(resumed_from, **zero), evals)
    # TRL 1.16 takes a datasets.Dataset: an Arrow file in the token cache, memory-mapped (data.trl_dataset)
    dataset = trl_dataset(data.train, "grpo", lambda: ({"prompt": e.text, "index": k}
                                                       for k, e in enumerate(data.train)), run.log)
    callbacks = [evals, counter, guard, hf.MetricLogCallback(cfg, out)]  # the order hf_bridge asks for
    trainer = PromptIdsTrainer(
        model=model, args=to_grpo_config(cfg, out, run.precision), train_dataset=dataset, callbacks=callbacks,
        reward_funcs=to_reward_funcs(rewards, data.train, counter), processing_class=run.tokenizer,
        prompt_ids=Column(data.train, "input_ids"))
    trainer.remove_callback(PrinterCallback)  # with the progress bar off it prints every log dict to stdout
    if resumed_from:
        run.log(f"resuming from {resumed_from}")
    try:
        trainer.train(resume_from_checkpoint=resumed_from)
    finally:
        guard.restore_signals()  # also when train() raises: on_train_end is skipped then
    totals = counter.totals()  # every process's steps, without evaluation
    guard.raise_if_stopped()

    history = [to_record(h, rewards.names) for h in hf.history_of(trainer)]
    after = evaluate() if data.eval else {}
    if "ref" in getattr(model, "peft_config", {}):  # TRL's copy of the initial adapter (beta > 0): not ours to save
        model.delete_adapter("ref")
    result = TrainResult(trainer.state.global_step, history, evals.evals, totals["tokens"],
                         totals["completion_tokens"], totals["seconds"], resumed_from)
    samples = details.get("samples") or [], after.get("samples") or []
    write_samples(out, *samples)
    if history:
        plot_steps(history, out / "rewards.png")
    cost = {"seconds_per_step": totals["seconds"] / max(trainer.state.global_step, 1),
            "skipped_steps": guard.skipped,
            "completions_per_step": cfg.training.batch_size * cfg.training.grad_accum * cfg.grpo.num_generations}
    template = {"template": template_name(cfg, run.tokenizer), "chat_template": run.tokenizer.chat_template,
                "system_prompt": cfg.data.system_prompt}
    outcome = skeleton.Outcome(result, counts, before, summary(after) or {}, data.summary, cost=cost, template=template,
                               section=_section(*samples, cfg, [question(e) for e in data.eval]))
    return skeleton.finish(run, model, outcome)
