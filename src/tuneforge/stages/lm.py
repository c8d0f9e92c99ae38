"""The causal-LM recipe of sft and pretrain on the shared skeleton: the base scored (loss, perplexity, and
for sft the task metrics of greedy generations) before and after, next-token loss on supervised tokens,
padding-free packing unless the method needs padded rows.

    tuneforge train examples/quickstart.yaml      # sft
    tuneforge train examples/pretrain.yaml        # pretrain
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import tuneforge.stages.skeleton as skeleton
from tuneforge.config.schema import Config
from tuneforge.data.mixing import MixedExamples, tokens_by_source
from tuneforge.data.templates import apply_template
from tuneforge.evaluation.generate import generate
from tuneforge.evaluation.items import GenerationItem, generation_items
from tuneforge.evaluation.metrics import compute
from tuneforge.train.loop import plan_steps, train
from tuneforge.train.loss import evaluate_lm_loss


def _evaluate(run: skeleton.StageRun, model, examples: list, items: list[GenerationItem], packed: bool,
              sources: dict[str, list] | None = None) -> tuple[dict, list[str]]:
    cfg, t = run.cfg, run.cfg.training

    def loss(rows: list) -> dict:
        return evaluate_lm_loss(model, rows, t, run.precision, packed)  # as the loop's evaluations

    result = loss(examples) if examples else {}
    for name, mine in (sources or {}).items():  # several eval files: each one's loss too
        result[f"loss/{name}"] = loss(mine)["loss"]
    outputs = generate(model, run.tokenizer, [i.prompt_ids for i in items], cfg.eval.max_new_tokens,
                       run.precision) if items else []
    if "exact_match" in run.info.metrics and items:
        result.update(compute(cfg.eval.metrics, outputs, [i.reference or "" for i in items]))
    return result, outputs


def _eval_parts(data, items: list[GenerationItem]) -> dict:
    """What the base's evaluation reads, for its cache key: the eval rows as tokenized, each source's, and the
    generation prompts with their references."""
    from tuneforge.evaluation.base_cache import rows_digest

    return {"rows": rows_digest(data.eval or []),
            "sources": {name: rows_digest(rows) for name, rows in (data.eval_sources or {}).items()},
            "items": [[list(i.prompt_ids), i.reference] for i in items]}


def run_lm(cfg: Config, log: Callable[[str], None] = print, *,
           on_eval: Callable[[int, dict], None] | None = None) -> Path:
    """`on_eval(step, result)` sees every periodic evaluation (tuneforge hpo prunes from it)."""
    run = skeleton.begin(cfg, log)
    template = apply_template(run.tokenizer, cfg.data.template) if run.info.chat_template else None
    data = skeleton.load_data(run)
    items = generation_items(cfg, run.tokenizer, data.eval_records)
    skeleton.open_output(run)
    model = skeleton.load_base(run)

    def base() -> tuple[dict, dict]:
        metrics, outputs = _evaluate(run, model, data.eval, items, True, data.eval_sources)
        return metrics, {"generations": outputs}

    before, details = skeleton.eval_before(run, base, key_parts=_eval_parts(data, items))
    model, counts = skeleton.apply_method(run, model)
    result = train(model, data.train, data.eval, cfg, run.out, run.precision, log=run.log,
                   packed=run.method.packing, on_eval=on_eval)
    if isinstance(data.train, MixedExamples):  # what each source trained, walked as the loop walked the mix
        trained = tokens_by_source(data.train, result.steps, plan_steps(cfg, len(data.train))[0],
                                   cfg.training.batch_size, cfg.training.grad_accum, cfg.seed)
        for source, tokens in zip(data.summary["train"]["sources"], trained, strict=True):
            source["tokens_trained"] = tokens
    after, generations = {}, []
    if run.main:
        after, tuned = _evaluate(run, model, data.eval, items, run.method.packing, data.eval_sources)
        base_outputs = details.get("generations") or [""] * len(items)
        generations = [{"prompt": i.prompt, "question": i.question, "reference": i.reference, "base": b, "tuned": t}
                       for i, b, t in zip(items, base_outputs, tuned, strict=True)]
    outcome = skeleton.Outcome(result, counts, before, after, data.summary, generations=generations,
                               template={"template": template, "chat_template": run.tokenizer.chat_template,
                                         "system_prompt": cfg.data.system_prompt})
    return skeleton.finish(run, model, outcome)
