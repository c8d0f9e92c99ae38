"""The benchmark's rows (Self-Instruct's 175 human-written seed tasks, bench/data/README.md), the shared eval
loss and the real-token counter: one definition for every recipe."""

from __future__ import annotations

import hashlib
import json
import statistics
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

DATA = Path(__file__).resolve().parent.parent / "data" / "self_instruct_seed_tasks.jsonl"
DATA_SHA256 = "7779004fa198fdf27cf70a159363879d8a26c53329e11b436af17b3941875f48"
EVAL_EVERY = 5  # rows with index % 5 == 4 are held out: 35 eval, 140 train
Sample = dict[str, str]  # {"prompt", "completion"}


def load_rows(path: Path = DATA) -> list[Sample]:
    raw = path.read_bytes()
    if path == DATA and hashlib.sha256(raw).hexdigest() != DATA_SHA256:
        raise SystemExit(f"{path}: sha256 differs from the vendored file's; see bench/data/README.md")
    rows = []
    for line in raw.decode("utf-8").splitlines():
        task = json.loads(line)
        for inst in task["instances"]:
            prompt = task["instruction"] + (f"\n\n{inst['input']}" if inst["input"].strip() else "")
            rows.append({"prompt": prompt, "completion": inst["output"]})
    return rows


def split_rows(rows: list[Sample], train_rows: int = 0, eval_rows: int = 0) -> tuple[list[Sample], list[Sample]]:
    """(train, eval): a fixed hold-out; train_rows / eval_rows > 0 take the first that many (the quick mode)."""
    train = [r for i, r in enumerate(rows) if i % EVAL_EVERY != EVAL_EVERY - 1]
    evals = [r for i, r in enumerate(rows) if i % EVAL_EVERY == EVAL_EVERY - 1]
    return train[: train_rows or None], evals[: eval_rows or None]


def chat(s: Sample) -> list[dict[str, str]]:
    return [{"role": "user", "content": s["prompt"]}, {"role": "assistant", "content": s["completion"]}]


def render(tok: Any, s: Sample, prompt_only: bool = False) -> str:
    if prompt_only:
        return tok.apply_chat_template(chat(s)[:1], tokenize=False, add_generation_prompt=True)
    return tok.apply_chat_template(chat(s), tokenize=False)


def encode(tok: Any, s: Sample, max_len: int) -> tuple[list[int], int, int]:
    """(ids of the chat-rendered sample, first completion position, end of the completion through EOS)."""
    prompt = tok(render(tok, s, prompt_only=True), add_special_tokens=False)["input_ids"]
    ids = tok(render(tok, s), add_special_tokens=False)["input_ids"]
    assert ids[: len(prompt)] == prompt, "chat template does not render the prompt as a prefix"
    ends = [i + 1 for i, t in enumerate(ids) if t == tok.eos_token_id and i >= len(prompt)]
    end = ends[0] if ends else len(ids)
    return ids[:max_len], len(prompt), min(end, max_len)


def data_stats(tok: Any, rows: list[Sample], max_len: int) -> dict[str, Any]:
    lens = sorted(len(tok(render(tok, s), add_special_tokens=False)["input_ids"]) for s in rows)
    return {"rows": len(lens), "mean_tokens": round(statistics.mean(lens), 1), "p50": lens[len(lens) // 2],
            "p99": lens[int(0.99 * (len(lens) - 1))], "max": lens[-1],
            "over_max_length": sum(x > max_len for x in lens), "tokens": sum(min(x, max_len) for x in lens)}


@torch.no_grad()
def eval_loss(model: torch.nn.Module, examples: list[tuple[list[int], int, int]]) -> float:
    """THE eval metric of every recipe: fp32, one sample per forward (no padding), mean cross-entropy per
    completion token (through EOS)."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for ids, start, end in examples:
        if end <= start:
            continue
        x = torch.tensor([ids[:end]])
        logits = model(input_ids=x, use_cache=False).logits[0, start - 1 : end - 1].float()
        total += float(F.cross_entropy(logits, x[0, start:end], reduction="sum"))
        count += end - start
    model.train(was)
    return total / count


class TokenCounter:
    """Counts what the training forwards are fed: real tokens = attention-mask sum (every token when no mask is
    fed, as in padding-free rows); fed tokens include padding."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.real = self.fed = self.calls = 0
        # the decoder (LlamaModel under the causal LM, under PEFT): every recipe's forward feeds it once, including
        # tuneforge's chunked loss, which calls the decoder and the head itself rather than the causal LM's forward
        from tuneforge.train.chunked_loss import decoder_of

        target = decoder_of(model) or model
        self.handle = target.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if not module.training:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        self.calls += 1
        self.fed += ids.numel()
        self.real += int(mask.sum()) if mask is not None and mask.dim() == 2 else ids.numel()
