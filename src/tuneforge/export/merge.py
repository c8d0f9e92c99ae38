"""Merge an adapter run into a standalone model directory, then prove it: reload the merged model from
disk and compare its logits with the adapter model's (fp32, atol 1e-4). A difference fails loudly and
leaves nothing behind.

    tuneforge merge runs/quickstart [--output runs/quickstart/merged]
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from tuneforge.errors import UserError
from tuneforge.fsutil import make_temp_dir, write_json_atomic
from tuneforge.methods import METHODS
from tuneforge.runs import load_run, run_config

PROBE = ["The quick brown fox jumps over the lazy dog.", "Extract the order: Maria wants 3 lamps in Lisbon."]


class MergeMismatch(UserError):
    exit_code = 1


def _probe_inputs(run_dir: Path, tokenizer) -> list[str]:
    """Prompts the run generated for (rendered with its template), else fixed text."""
    gens = run_dir / "generations.jsonl"
    if gens.is_file():
        prompts = [json.loads(line)["prompt"] for line in gens.read_text().splitlines()[:4]]
        if prompts:
            return prompts
    return PROBE


@torch.no_grad()
def _logits(model, tokenizer, texts: list[str]) -> torch.Tensor:
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    tokenizer.padding_side = side
    out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.float()
    if out.dim() == 2:  # a sequence classifier: one row of label logits per text
        return out
    return out * enc["attention_mask"][..., None]  # padded positions do not count


def merge(run_dir: str | Path, output: str | Path | None = None, atol: float = 1e-4) -> Path:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    method = METHODS[cfg.method.name]
    if not method.mergeable:
        raise UserError(f"merge does not apply to method {cfg.method.name!r}: {method.why_not_mergeable}")
    output = Path(output) if output else run_dir / "merged"
    if output.exists():
        raise UserError(f"{output} already exists; remove it or pass --output")
    model, tokenizer, cfg = load_run(run_dir, dequantize=True)  # qlora: the base reloaded unquantized
    texts = _probe_inputs(run_dir, tokenizer)
    want = _logits(model, tokenizer, texts)
    merged = model.merge_and_unload()
    tmp = make_temp_dir(output.parent, f".{output.name}.")
    try:
        merged.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if (run_dir / "template.json").is_file():  # chat/serve read the system prompt the run trained with
            shutil.copy2(run_dir / "template.json", tmp / "template.json")
        auto = AutoModelForSequenceClassification if cfg.stage == "classify" else AutoModelForCausalLM
        reloaded = auto.from_pretrained(str(tmp), dtype=torch.float32, use_safetensors=True).eval()
        diff = float((_logits(reloaded, tokenizer, texts) - want).abs().max())
        report = {"run": str(run_dir), "method": cfg.method.name, "base": cfg.model, "max_abs_logit_diff": diff,
                  "atol": atol, "probe_prompts": len(texts)}
        if cfg.method.name == "qlora":
            report["note"] = "merged into the unquantized base; the 4-bit training base differs by its quantization error"
        if diff > atol:
            raise MergeMismatch(f"merged model differs from the adapter model: max |logit diff| {diff:.3g} > {atol}")
        write_json_atomic(tmp / "merge.json", report)
        tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"merged {run_dir} -> {output} (max |logit diff| {diff:.2e} <= {atol})")
    return output
