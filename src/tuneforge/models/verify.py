"""Merge a loaded adapter model into plain weights and prove it: save, reload from disk, compare logits
with the adapter model's (fp32, atol 1e-4). A difference fails loudly and leaves nothing behind. Used by
`tuneforge merge` (tuneforge.export.merge) and by chaining (`model:` naming an earlier adapter run).

Where the fp32 logits differ by more than atol, both models are compared again in fp64 and that decides: fp32
arithmetic alone moves a model's logits by amounts that grow with its weights, not its logits (a tiny LoRA given
large updates: adapter model fp32 vs fp64 2.6e-4, merged vs adapter 2.0e-4 in fp32 but 4.5e-5 in fp64, logits
~9 in both cases), so the fp32 difference of two exact computations can exceed 1e-4, while a merge that is off
by 0.1% differs by 4e-2 in either precision. merge.json keeps both figures.

    diff = merge_and_verify(model, tokenizer, dest, probe_inputs(run_dir), reload=lambda p: load(p))
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from tuneforge.device import model_device, move
from tuneforge.errors import UserError
from tuneforge.fsutil import make_temp_dir, write_json_atomic

PROBE = ["The quick brown fox jumps over the lazy dog.", "Extract the order: Maria wants 3 lamps in Lisbon."]


class MergeMismatch(UserError):
    exit_code = 1


def probe_inputs(run_dir: Path) -> list[str]:
    """Prompts the run generated for (rendered with its template), else fixed text."""
    gens = run_dir / "generations.jsonl"
    if gens.is_file():
        prompts = [json.loads(line)["prompt"] for line in gens.read_text().splitlines()[:4]]
        if prompts:
            return prompts
    return PROBE


@torch.no_grad()
def logits(model, tokenizer, texts: list[str], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    tokenizer.padding_side = side
    ids, mask = move(enc["input_ids"], model_device(model)), move(enc["attention_mask"], model_device(model))
    out = model(input_ids=ids, attention_mask=mask).logits.to(dtype).cpu()  # compared on the CPU, whatever the device
    if out.dim() == 2:  # a sequence classifier: one row of label logits per text
        return out
    return out * enc["attention_mask"][..., None]  # padded positions do not count


def logits_fp64(model, tokenizer, texts: list[str]) -> torch.Tensor | None:
    """The logits computed in fp64 (the model is cast there and back: fp32 -> fp64 -> fp32 is exact); None for
    a model that is not all fp32 (4-bit, bf16) or sits on a device without fp64 (mps)."""
    buffers = [b for b in model.buffers() if b.is_floating_point()]  # (integer buffers: position ids)
    if any(t.dtype != torch.float32 for t in (*model.parameters(), *buffers)) or model_device(model).type == "mps":
        return None
    model.to(torch.float64)
    try:
        return logits(model, tokenizer, texts, torch.float64)
    finally:
        model.to(torch.float32)


def merge_and_verify(model, tokenizer, dest: Path, texts: list[str], reload: Callable[[Path], torch.nn.Module],
                     atol: float = 1e-4, copy: Iterable[Path] = (), report: dict | None = None) -> float:
    """Fold `model`'s adapter into its base, save it with `tokenizer` (and the files in `copy`) to a
    temporary directory, `reload` it from there (with the class the run's stage needs) and compare logits on
    `texts`; within `atol` (in fp32, else in fp64: see the module docstring) the directory is renamed to `dest`
    with merge.json (`report` + the differences). Returns the difference that decided."""
    want, want64 = logits(model, tokenizer, texts), logits_fp64(model, tokenizer, texts)
    merged = model.merge_and_unload()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(dest.parent, f".{dest.name}.")
    try:
        merged.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        for path in copy:  # e.g. template.json: chat/serve read the system prompt the run trained with
            if path.is_file():
                shutil.copy2(path, tmp / path.name)
        reloaded = reload(tmp).eval()
        diff = float((logits(reloaded, tokenizer, texts) - want).abs().max())
        got64 = logits_fp64(reloaded, tokenizer, texts) if diff > atol and want64 is not None else None
        diff64 = None if got64 is None else float((got64 - want64).abs().max())
        if diff > atol and (diff64 is None or diff64 > atol):
            exact = "" if diff64 is None else f" ({diff64:.3g} in fp64)"
            raise MergeMismatch(f"merged model differs from the adapter model: max |logit diff| {diff:.3g}{exact} "
                                f"> {atol}")
        write_json_atomic(tmp / "merge.json", {**(report or {}), "max_abs_logit_diff": diff, "atol": atol,
                                               "max_abs_logit_diff_fp64": diff64, "probe_prompts": len(texts)})
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return diff if diff64 is None else diff64
