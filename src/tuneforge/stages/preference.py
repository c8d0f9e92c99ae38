"""The preference objectives beyond dpo on the shared skeleton: `kto` (unpaired rows: prompt, completion, label
true / false; a reference model as dpo), and the reference-free `orpo`, `simpo` and `cpo` on dpo's pairs. TRL
1.16's trainers train them (train.pref_trainers) on tuneforge's tokenization; the before / after metrics on the
eval rows are computed here from response log-probs (rl.pref_losses), not read from TRL's logs.

    tuneforge train examples/preference/kto.yaml     # or orpo.yaml, simpo.yaml, cpo.yaml; docs/preference.md
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

import tuneforge.stages.skeleton as skeleton
from tuneforge.config.schema import Config
from tuneforge.data.preference import use_template
from tuneforge.errors import ConfigError
from tuneforge.report.margins import plot_margins
from tuneforge.rl.pref_losses import kto_metrics, pair_metrics, pair_rewards
from tuneforge.train import hf_bridge
from tuneforge.train.cost import model_flops
from tuneforge.train.pref_trainers import build_trainer
from tuneforge.train.preference import (
    completion_logps,
    reference_of,
    response_logps,
    template_name,
    train_with_callbacks,
)

SECTIONS = {
    "kto": "Implicit reward r = beta * (log pi(completion) - log ref(completion)); the reference is the base, so "
           "every reward is 0 before training. reward_accuracy: share of (desirable, undesirable) eval rows with "
           "the same prompt where the desirable one has the higher reward; kl: the KL estimate z0 (log-ratio of "
           "mismatched completions, clamped at 0).",
    "orpo": "Reward r = beta * mean token log-prob of the response (no reference); log_odds_ratio: mean "
            "log(odds(chosen) / odds(rejected)).",
    "simpo": "Reward r = beta * mean token log-prob of the response (no reference); the loss asks "
             "r(chosen) - r(rejected) to exceed gamma.",
    "cpo": "Reward r = beta * summed log-prob of the response (no reference); the loss adds cpo_alpha times the "
           "chosen response's NLL.",
}


class _Scorer:
    """The stage's eval metrics of a model, given the reference's scores (kto) or none (orpo, simpo, cpo)."""

    def __init__(self, cfg: Config, examples: list, precision: str) -> None:
        self.cfg, self.block, self.examples, self.precision = cfg, getattr(cfg, cfg.stage), examples, precision
        self.kto = cfg.stage == "kto"
        if self.kto:  # KL rows: each prompt with the completion of the row half the set away (mismatched: rows
            # derived from pairs sit side by side, so the neighbour's completion often answers the same prompt)
            self.rows = [(e.prompt_ids, e.completion_ids) for e in examples]
            shift = len(examples) // 2 if len(examples) >= 4 else 1
            self.kl_rows = [(e.prompt_ids, examples[i - shift].completion_ids) for i, e in enumerate(examples)]
            self.labels = torch.tensor([e.label for e in examples])

    def logps(self, model) -> list[torch.Tensor]:
        bs = self.cfg.training.batch_size
        if not self.kto:
            return list(response_logps(model, self.examples, bs, self.precision))
        return [completion_logps(model, self.rows, bs, self.precision)[0],
                completion_logps(model, self.kl_rows, bs, self.precision)[0]]

    def metrics(self, policy: list[torch.Tensor], reference: list[torch.Tensor] | None) -> dict:
        if not self.kto:
            return pair_metrics(self.cfg.stage, tuple(policy), self.block)
        prompts = [tuple(e.prompt_ids) for e in self.examples]
        return kto_metrics(policy[0], reference[0], policy[1], reference[1], self.labels, prompts, self.block)

    def margins(self, policy: list[torch.Tensor], reference: list[torch.Tensor] | None) -> list[float]:
        if not self.kto:
            chosen, rejected = pair_rewards(self.cfg.stage, tuple(policy), self.block.beta)
            return (chosen - rejected).tolist()
        return (self.block.beta * (policy[0] - reference[0])).tolist()


def run(cfg: Config, log: Callable[[str], None] = print, *, on_eval: Callable[[int, dict], None] | None = None) -> Path:
    """`on_eval(step, result)` sees every periodic evaluation (tuneforge hpo prunes from it)."""
    run = skeleton.begin(cfg, log)  # (one process: stage_info says these stages are not distributed)
    if cfg.stage == "kto" and cfg.training.batch_size < 2:  # TRL 1.16 refuses it with a ValueError
        raise ConfigError("key 'training.batch_size': kto needs at least 2 rows per batch (its KL estimate pairs "
                          f"each prompt with another row's completion), got {cfg.training.batch_size}")
    data = skeleton.load_data(run)
    template = template_name(run.tokenizer, use_template(cfg, run.tokenizer))
    run.log(f"template {template or 'none'}")
    resumed_from = hf_bridge.resume_checkpoint(cfg, Path(cfg.output_dir))
    out = skeleton.open_output(run)
    model = skeleton.load_base(run)
    scorer = _Scorer(cfg, data.eval, run.precision)

    def base() -> tuple[dict, dict]:  # kto: policy == reference, whose scores are kept for periodic evals
        logps = scorer.logps(model)
        return scorer.metrics(logps, logps), {"logps": [t.tolist() for t in logps]}

    before, details = skeleton.eval_before(run, base, required=scorer.kto) if data.eval else ({}, {})
    base_logps = [torch.tensor(v) for v in details["logps"]] if data.eval and details else None
    model, counts = skeleton.apply_method(run, model)

    evaluate = (lambda: scorer.metrics(scorer.logps(model), base_logps)) if data.eval else None
    trained = train_with_callbacks(
        cfg, out, lambda callbacks, counter: build_trainer(cfg, model, run.tokenizer, data.train, out, run.precision,
                                                           callbacks, counter, run.log),
        evaluate, on_eval, resumed_from, run.log, precision=run.precision)
    trainer, result = trained.trainer, trained.result

    after, section = {}, ""
    if data.eval:
        run.log("scoring the eval rows with the tuned model ...")
        policy, reference = scorer.logps(model), None
        if scorer.kto:
            as_reference, ref_module = reference_of(model, trainer)
            with as_reference():
                reference = scorer.logps(ref_module)
        after = scorer.metrics(policy, reference)
        base_margins = scorer.margins(base_logps, base_logps) if base_logps else []
        plot_margins({"base": base_margins, "tuned": scorer.margins(policy, reference)}, out / "margins.png",
                     f"{cfg.stage} implicit reward {'(eval rows)' if scorer.kto else 'margin (eval pairs)'}")
        section = "\n".join([f"## {cfg.stage.upper()}", "", SECTIONS[cfg.stage], "", "![rewards](margins.png)"])
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")  # only the trained adapter is the run's
    extra_forwards = 3 if scorer.kto else 0  # kto: the reference's and both KL forward passes (2 FLOPs / param)
    emb, tokens = model.get_input_embeddings().weight.numel(), result.tokens_seen
    flops = model_flops(model, tokens, *counts) + 2.0 * extra_forwards * (counts[1] - emb) * tokens
    saved_template = {"template": template, "chat_template": run.tokenizer.chat_template,
                      "system_prompt": cfg.data.system_prompt}
    outcome = skeleton.Outcome(result, counts, before, after, data.summary,
                               extra={cfg.stage: getattr(cfg, cfg.stage).model_dump()},
                               cost={"model_flops": flops, "nonfinite_steps_skipped": len(trained.guard.skipped)},
                               section=section, template=saved_template)
    return skeleton.finish(run, model, outcome)
