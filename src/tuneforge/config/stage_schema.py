"""The blocks of the preference and RL stages (`dpo:`, `kto:`, `orpo:`, `simpo:`, `cpo:`, `ppo:`, `grpo:`) and
their reward sources."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tuneforge.config.strict import Strict


class RewardSourceConfig(Strict):
    """One reward for ppo / grpo: a finished `reward` run (its scalar head scores prompt + completion,
    rendered like its training data), or a Python function named `module:function` with TRL's reward
    signature `fn(prompts, completions, **columns) -> list[float]` (columns: the prompt rows' other fields).
    Several sources add up, each times its weight."""

    run: str | None = None
    function: str | None = Field(None, description="module:function, e.g. tuneforge.rl.rewards:exact_match")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments for the function")
    weight: float = 1.0

    @model_validator(mode="after")
    def _one_source(self) -> RewardSourceConfig:
        if (self.run is None) == (self.function is None):
            raise ValueError("give exactly one of 'run' (a reward run directory) or 'function' (module:function)")
        if self.function is not None and (self.function.count(":") != 1 or not all(self.function.split(":"))):
            raise ValueError(f"'function' must look like module:function, got {self.function!r}")
        return self


class DpoConfig(Strict):
    """Direct preference optimisation (TRL DPOTrainer). With a PEFT method the reference model is the
    adapter-disabled base, not a second copy."""

    beta: float = Field(0.1, gt=0)
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)


class KtoConfig(Strict):
    """Kahneman-Tversky optimisation (TRL KTOTrainer) on unpaired rows: prompt, completion, label true / false.
    The reference is the adapter-disabled base under PEFT, a frozen copy with full / freeze (as dpo)."""

    beta: float = Field(0.1, gt=0)
    desirable_weight: float = Field(1.0, gt=0, description="loss weight of label-true rows")
    undesirable_weight: float = Field(1.0, gt=0, description="loss weight of label-false rows")


class OrpoConfig(Strict):
    """Odds-ratio preference optimisation (TRL ORPOTrainer): the chosen response's NLL plus beta times the
    log-odds-ratio loss of length-averaged log-probs; no reference model."""

    beta: float = Field(0.1, gt=0, description="weight of the odds-ratio term (lambda in the paper)")


class SimpoConfig(Strict):
    """SimPO (TRL CPOTrainer, loss_type simpo): -log sigmoid(beta * (avg logp chosen - avg logp rejected) - gamma),
    length-normalised and reference-free."""

    beta: float = Field(2.0, gt=0)
    gamma: float = Field(0.5, ge=0, description="target reward margin (the paper's gamma)")


class CpoConfig(Strict):
    """Contrastive preference optimisation (TRL CPOTrainer, loss_type sigmoid): -log sigmoid(beta * (logp chosen -
    logp rejected)) on summed log-probs plus cpo_alpha times the chosen response's NLL; no reference model."""

    beta: float = Field(0.1, gt=0)
    cpo_alpha: float = Field(1.0, ge=0, description="weight of the chosen response's NLL (behaviour cloning)")


class SamplingConfig(Strict):
    """How ppo / grpo sample completions from the policy."""

    max_new_tokens: int = Field(32, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0: no top-k cut")


class PpoConfig(SamplingConfig):
    """tuneforge's own PPO (stages/ppo.py): training.batch_size prompts per rollout, training.max_steps
    rollouts; each rollout is optimised for `ppo_epochs` passes in minibatches of `minibatch_size`."""

    rewards: list[RewardSourceConfig] = Field(min_length=1)
    ppo_epochs: int = Field(2, ge=1)
    minibatch_size: int = Field(4, ge=1)
    clip_range: float = Field(0.2, gt=0)
    clip_range_value: float = Field(0.2, gt=0)
    vf_coef: float = Field(0.1, ge=0)
    gamma: float = Field(1.0, gt=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    kl_coef: float = Field(0.05, ge=0, description="initial (adaptive) or fixed KL penalty coefficient")
    kl_control: Literal["adaptive", "fixed"] = "adaptive"
    target_kl: float = Field(6.0, gt=0, description="adaptive control: target KL per completion (nats)")
    kl_horizon: int = Field(10000, ge=1)
    max_kl: float | None = Field(30.0, gt=0, description="stop when a rollout's mean KL exceeds this")
    whiten_advantages: bool = True


class GrpoConfig(SamplingConfig):
    """Group relative policy optimisation (TRL GRPOTrainer): training.batch_size prompts per step, each
    sampled `num_generations` times; advantages are rewards relative to their group."""

    rewards: list[RewardSourceConfig] = Field(min_length=1)
    num_generations: int = Field(4, ge=2)
    beta: float = Field(0.04, ge=0, description="KL penalty to the reference (0: no reference model)")
    epsilon: float = Field(0.2, gt=0, description="clip range of the probability ratio")
    num_iterations: int = Field(1, ge=1, description="optimisation passes per generated batch")
    # TRL 1.16's loss formulations (GRPOConfig.loss_type; dapo is TRL's default); luspo runs at sequence level.
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"] = "dapo"
    # Divide advantages by the std of the group, of the whole batch, or not at all; true / false mean group / none.
    scale_rewards: Literal["group", "batch", "none"] = "group"

    @field_validator("scale_rewards", mode="before")
    @classmethod
    def _scale_rewards_bool(cls, value: Any) -> Any:
        return {True: "group", False: "none"}.get(value, value) if isinstance(value, bool) else value
