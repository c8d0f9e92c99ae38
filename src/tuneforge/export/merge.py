"""`tuneforge merge RUN`: fold a run's adapter into a standalone model directory, then prove it (reload the
merged model from disk with the class the run's stage needs, compare its logits with the adapter model's:
fp32, atol 1e-4; tuneforge.models.verify). A difference fails loudly and leaves nothing behind.

    tuneforge merge runs/quickstart [--output runs/quickstart/merged]
"""

from __future__ import annotations

from pathlib import Path

from tuneforge.device import for_command, place
from tuneforge.errors import UserError
from tuneforge.methods import METHODS
from tuneforge.models.chain import run_loader
from tuneforge.models.verify import MergeMismatch, logits, merge_and_verify, probe_inputs
from tuneforge.runs import load_run, run_config, run_labels
from tuneforge.stage_info import stage_info

__all__ = ["MergeMismatch", "merge"]
_logits = logits  # the names tests and older callers import
_probe_inputs = probe_inputs


def merge(run_dir: str | Path, output: str | Path | None = None, atol: float = 1e-4, device: str | None = None) -> Path:
    """`device`: --device (default: the run's training.device); the merge and its logit check run there."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    where = for_command(device, cfg.training.device)
    method = METHODS[cfg.method.name]
    if not method.mergeable:
        raise UserError(f"merge does not apply to method {cfg.method.name!r}: {method.why_not_mergeable}")
    output = Path(output) if output else run_dir / "merged"
    if output.exists():
        raise UserError(f"{output} already exists; remove it or pass --output")
    model, tokenizer, cfg = load_run(run_dir, dequantize=True)  # qlora: the base reloaded unquantized
    place(model, where)
    reload = run_loader(cfg, run_labels(run_dir) if stage_info(cfg.stage).has_labels else None)
    texts = probe_inputs(run_dir)
    report = {"run": str(run_dir), "method": cfg.method.name, "base": cfg.model}
    if method.quantized_base:
        report["note"] = "merged into the unquantized base; the 4-bit training base differs by its quantization error"
        report["max_abs_logit_diff_vs_trained_4bit"] = _quantization_diff(run_dir, logits(model, tokenizer, texts),
                                                                         tokenizer, texts)
    diff = merge_and_verify(model, tokenizer, output, texts, lambda p: place(reload(str(p)), where), atol,
                            copy=[run_dir / "template.json"], report=report)
    print(f"merged {run_dir} -> {output} (max |logit diff| {diff:.2e} <= {atol})")
    return output


def _quantization_diff(run_dir: Path, want, tokenizer, texts: list[str]) -> float:
    """How far the adapter on the unquantized base (what the merge holds) is from the policy that trained
    (the adapter on the 4-bit base): the price of merging a qlora run, reported, not hidden."""
    trained, _, _ = load_run(run_dir)
    return float((logits(trained, tokenizer, texts) - want).abs().max())
