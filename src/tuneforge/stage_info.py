"""What each stage *is*, declared once: the kind of model it makes, the kind of records its data holds,
whether it renders a chat template, whether a later stage may chain from it, what its loss averages over
and which metrics it reports. Code outside `stages/` asks this table (never `if cfg.stage == ...`);
`tuneforge.stages.STAGES` pairs each entry with the stage's `run`.

    info = stage_info(cfg.stage)
    if info.model_kind != "causal_lm": ...     # chat / serve / eval generation refuse it

This module is a component: it imports no stage module, so anything may import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tuneforge.errors import ConfigError

ModelKind = Literal["causal_lm", "classifier", "scorer"]
RecordKind = Literal["sft", "pretrain", "classify", "preference", "prompt", "kto"]


@dataclass(frozen=True)
class StageInfo:
    name: str
    # causal_lm: generates text (chat, serve, eval generation, merge/export as a causal LM);
    # classifier: labels with a trained head (predict); scorer: one scalar output (a reward source).
    model_kind: ModelKind
    # The kind of record its data file holds (one reader and one validator per kind: data check, validate
    # and training all use it).
    records: RecordKind
    # How its examples are built from those records (data.stage_data.EXAMPLE_BUILDERS): reward and dpo read
    # the same preference records but build different examples (scored texts vs. prompt/response ids).
    examples: str
    # Renders the run's chat template (sft, dpo, ppo, grpo): template.json is saved with the run and chat /
    # serve / eval use it.
    chat_template: bool
    # A later stage may name the run as `model:` (its model is a causal LM to continue from).
    chainable: bool
    # What the training loss averages over (metrics.json's train block counts it).
    loss_unit: str
    # The headline metrics of eval_before / eval_after, in report order.
    metrics: tuple[str, ...]
    # The stage's own config block (dpo:, ppo:, grpo:), if it has one.
    block: str | None = None
    # Whether the stage trains under torchrun / --nproc (dpo, grpo, ppo run in one process).
    distributed: bool = True

    @property
    def generates(self) -> bool:
        return self.model_kind == "causal_lm"

    @property
    def has_labels(self) -> bool:
        """The run saves labels.json and loads back as a sequence classifier (classify, reward)."""
        return self.model_kind in ("classifier", "scorer")


_LM = ("loss", "perplexity")
STAGE_INFO: dict[str, StageInfo] = {
    "sft": StageInfo("sft", "causal_lm", "sft", "lm", chat_template=True, chainable=True,
                     loss_unit="supervised_tokens", metrics=(*_LM, "exact_match", "token_f1")),
    "pretrain": StageInfo("pretrain", "causal_lm", "pretrain", "lm", chat_template=False, chainable=True,
                          loss_unit="supervised_tokens", metrics=_LM),
    "classify": StageInfo("classify", "classifier", "classify", "classify", chat_template=False, chainable=False,
                          loss_unit="samples", metrics=("loss", "accuracy", "macro_f1")),
    "reward": StageInfo("reward", "scorer", "preference", "scored_pairs", chat_template=False, chainable=False,
                        loss_unit="pairs", metrics=("loss", "accuracy", "margin_mean")),
    "dpo": StageInfo("dpo", "causal_lm", "preference", "dpo_pairs", chat_template=True, chainable=True,
                     loss_unit="pairs", metrics=("loss", "reward_accuracy", "reward_margin"), block="dpo",
                     distributed=False),
    # The preference objectives beyond dpo (stages/preference.py; TRL's KTO, ORPO and CPO trainers): kto reads
    # unpaired rows (prompt, completion, label true / false); orpo, simpo and cpo dpo's pairs, without a reference.
    "kto": StageInfo("kto", "causal_lm", "kto", "kto_rows", chat_template=True, chainable=True, loss_unit="rows",
                     metrics=("loss", "reward_accuracy", "reward_margin", "kl"), block="kto", distributed=False),
    **{name: StageInfo(name, "causal_lm", "preference", "dpo_pairs", chat_template=True, chainable=True,
                       loss_unit="pairs", metrics=("loss", "reward_accuracy", "reward_margin"), block=name,
                       distributed=False) for name in ("orpo", "simpo", "cpo")},
    "ppo": StageInfo("ppo", "causal_lm", "prompt", "prompts", chat_template=True, chainable=True,
                     loss_unit="tokens_generated", metrics=("reward_mean", "kl_mean"), block="ppo",
                     distributed=False),
    "grpo": StageInfo("grpo", "causal_lm", "prompt", "prompts", chat_template=True, chainable=True,
                      loss_unit="completion_tokens", metrics=("reward_mean", "kl_mean"), block="grpo",
                      distributed=False),
}


def stage_info(name: str) -> StageInfo:
    if name not in STAGE_INFO:
        raise ConfigError(f"key 'stage': unknown stage {name!r}; known: {', '.join(STAGE_INFO)}")
    return STAGE_INFO[name]
