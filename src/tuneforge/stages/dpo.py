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

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PrinterCallback, TrainerCallback

import tuneforge.stages.skeleton as skeleton
from tuneforge.config.schema import Config, DpoConfig
from tuneforge.data.dpo_pairs import DpoExample
from tuneforge.data.preference import use_template
from tuneforge.data.trl_dataset import trl_dataset
from tuneforge.errors import ConfigError
from tuneforge.report.margins import plot_margins
from tuneforge.train import hf_bridge
from tuneforge.train.cost import model_flops
from tuneforge.train.preference import Counter as _Counter
from tuneforge.train.preference import collate_pairs as _collate  # noqa: F401  (the tests build TRL batches)
from tuneforge.train.preference import reference_of, response_logps, train_with_callbacks
from tuneforge.train.preference import template_name as _template_name


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


def _trainer_class():
    from trl import DPOTrainer

    class PreTokenizedDPOTrainer(DPOTrainer):
        """Rows arrive tokenized by data.dpo_pairs (prompt_ids / chosen_ids / rejected_ids), so TRL 1.16's
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
                  callbacks: list[TrainerCallback], counter: _Counter | None = None,
                  log: Callable[[str], None] = print):
    """DPOTrainer on a model the method was already applied to. PEFT: ref_model None, and the reference is
    the adapter-disabled policy (TRL 1.16 would copy a pre-wrapped model's adapter as a 'ref' adapter; for
    zero-initialised adapters that is the base again, so the copy is dropped; PiSSA keeps it, because its
    adapter-disabled model is the residual, not the base). Full / freeze: TRL loads a frozen copy."""
    from trl import DPOConfig

    dcfg = cfg.dpo
    args = DPOConfig(**hf_bridge.to_trainer_args(cfg, out, precision), beta=dcfg.beta,
                     loss_type=[to_trl_loss_type(dcfg)], label_smoothing=dcfg.label_smoothing,
                     max_length=cfg.training.max_length, trust_remote_code=cfg.trust_remote_code,
                     disable_dropout=True)  # policy and reference must score alike (TRL's default)
    # TRL 1.16 takes a datasets.Dataset: an Arrow file in the token cache, memory-mapped (data.trl_dataset)
    dataset = trl_dataset(examples, "dpo", lambda: (e.row() for e in examples), log)
    trainer = _trainer_class()(model=model, ref_model=None, args=args, processing_class=tokenizer,
                               train_dataset=dataset, callbacks=callbacks)
    trainer.counter = counter
    if "ref" in getattr(model, "peft_config", {}) and getattr(cfg.method, "init", "default") != "pissa":
        model.delete_adapter("ref")
    trainer.remove_callback(PrinterCallback)  # with the progress bar off it prints every log dict to stdout
    return trainer


def _section() -> str:
    return "\n".join(["## DPO", "", "Implicit reward r = beta * (log pi(response) - log ref(response)), summed over "
                      "the response tokens; the reference is the base model, so every margin is 0 before training. "
                      "reward_accuracy: share of eval pairs with r(chosen) > r(rejected); logp_accuracy: share where "
                      "the policy itself gives the chosen response the higher log-probability.", "",
                      "![implicit reward margins on the eval pairs](margins.png)"])


def check_dpo_config(cfg: Config) -> None:
    if cfg.dpo.label_smoothing and cfg.dpo.loss_type != "sigmoid":
        raise ConfigError(f"key 'dpo.label_smoothing': applies to loss_type sigmoid (robust DPO), not "
                          f"{cfg.dpo.loss_type!r}; set it to 0")


def run(cfg: Config, log: Callable[[str], None] = print, *, on_eval: Callable[[int, dict], None] | None = None) -> Path:
    """`on_eval(step, result)` sees every periodic evaluation (tuneforge hpo prunes from it)."""
    run = skeleton.begin(cfg, log)  # (one process: stage_info says dpo is not distributed)
    check_dpo_config(cfg)
    data = skeleton.load_data(run)
    template = _template_name(run.tokenizer, use_template(cfg, run.tokenizer))
    run.log(f"template {template or 'none'}")
    resumed_from = hf_bridge.resume_checkpoint(cfg, Path(cfg.output_dir))  # a checkpoint of another run: refused
    out = skeleton.open_output(run)
    model = skeleton.load_base(run)
    bs, precision = cfg.training.batch_size, run.precision

    def base() -> tuple[dict, dict]:  # policy == reference: its log-probs are the reference's from now on
        logps = response_logps(model, data.eval, bs, precision)
        return dpo_metrics(logps, logps, cfg.dpo), {"logps": [t.tolist() for t in logps]}

    before, details = skeleton.eval_before(run, base, required=True) if data.eval else ({}, {})
    if data.eval and "logps" not in details:  # an eval_before.json of an older version (no details)
        details = base()[1]
    base_logps = tuple(torch.tensor(v) for v in details["logps"]) if data.eval else None
    model, counts = skeleton.apply_method(run, model)

    evaluate = (lambda: dpo_metrics(response_logps(model, data.eval, bs, precision), base_logps, cfg.dpo)) \
        if data.eval else None
    trained = train_with_callbacks(
        cfg, out, lambda callbacks, counter: build_trainer(cfg, model, run.tokenizer, data.train, out, precision,
                                                           callbacks, counter, run.log),
        evaluate, on_eval, resumed_from, run.log, precision=precision)
    trainer, result = trained.trainer, trained.result

    after, section = {}, ""
    if data.eval:
        run.log("scoring the eval pairs with the tuned model and the reference ...")
        policy = response_logps(model, data.eval, bs, precision)
        as_reference, reference = reference_of(model, trainer)
        with as_reference():
            ref = response_logps(reference, data.eval, bs, precision)
        after = dpo_metrics(policy, ref, cfg.dpo)
        margins = (cfg.dpo.beta * ((policy[0] - ref[0]) - (policy[1] - ref[1]))).tolist()
        plot_margins({"base (= reference)": [0.0] * len(data.eval), "tuned": margins}, out / "margins.png",
                     "implicit reward margin, eval pairs")
        section = _section()
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")  # only the trained adapter is the run's
    emb = model.get_input_embeddings().weight.numel()  # plus the reference's forward pass:
    flops = model_flops(model, result.tokens_seen, *counts) + 2.0 * (counts[1] - emb) * result.tokens_seen
    saved_template = {"template": template, "chat_template": run.tokenizer.chat_template,
                      "system_prompt": cfg.data.system_prompt}
    outcome = skeleton.Outcome(result, counts, before, after, data.summary, extra={"dpo": cfg.dpo.model_dump()},
                               cost={"model_flops": flops, "nonfinite_steps_skipped": len(trained.guard.skipped)},
                               section=section, template=saved_template)
    return skeleton.finish(run, model, outcome)
