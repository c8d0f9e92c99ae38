"""Training memory per method for the new-run form: `tuneforge plan`'s estimate (from the model's config alone,
no weights) for every method the stage supports, against this machine's memory.

    plan_methods("smollm2-135m-instruct", "sft", batch_size=8, max_length=512)
"""

from __future__ import annotations

from typing import Any

import psutil

from tuneforge.errors import UserError


def _precision(name: str) -> str:
    if name != "auto":
        return name
    from tuneforge.train.precision import cpu_has_bf16

    return "bf16-mixed" if cpu_has_bf16() else "fp32"  # what `precision: auto` trains with here (as plan does)


def plan_methods(model: str, stage: str, *, batch_size: int = 8, max_length: int = 1024, precision: str = "auto",
                 gradient_checkpointing: bool = False, frozen_bf16: bool = True, bf16_stream: bool = False,
                 chunked_loss: bool = True) -> dict[str, Any]:
    """{"budget_gib", "precision", "rows": [{"method", "gib", "trainable_params", "fits"} or {"method", "error"}]}.
    frozen_bf16, bf16_stream, chunked_loss: the form's training keys of those names (the schema's defaults)."""
    from tuneforge.methods import METHODS
    from tuneforge.plan import estimate, load_arch_config
    from tuneforge.stage_info import stage_info

    budget = psutil.virtual_memory().total / 2**30
    config = load_arch_config(model)
    common = dict(batch_size=batch_size, seq_len=max_length, budget_gb=budget, precision=_precision(precision),
                  gradient_checkpointing=gradient_checkpointing, classifier=stage_info(stage).has_labels,
                  frozen_bf16=frozen_bf16, bf16_stream=bf16_stream, chunked_loss=chunked_loss)
    rows = []
    for name, method in METHODS.items():
        if stage not in method.stages:
            continue
        try:
            est = estimate(config, name, **common)
            rows.append({"method": name, "gib": est["gib"]["total"], "trainable_params": est["trainable_params"],
                         "fits": est["fits"]})
        except UserError as exc:
            rows.append({"method": name, "error": str(exc).splitlines()[0]})
    return {"budget_gib": budget, "precision": common["precision"], "rows": rows}
