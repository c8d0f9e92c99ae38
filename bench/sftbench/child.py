"""One repetition of one recipe, in a fresh process (`bench_sft.py --child ...`): so peak RSS is the recipe's
own and the parent can time the whole process. Writes its raw figures as JSON; the phases are timed here, the
process as a whole by the parent."""

from __future__ import annotations

import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from sftbench.data import TokenCounter, encode, eval_loss, load_rows, split_rows
from sftbench.recipes import RECIPES, Common


def run_child(recipe: str, common: Common, train_rows: int, eval_rows: int, out: Path, t_start: float) -> None:
    from transformers import AutoTokenizer

    from tuneforge.models.load import resolve_model

    t_imported = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(resolve_model(common.model))
    train, evals = split_rows(load_rows(), train_rows, eval_rows)
    examples = [encode(tok, s, common.max_len) for s in evals]
    with tempfile.TemporaryDirectory(prefix=f"bench-{recipe}-") as tmp:
        setup = RECIPES[recipe](train, tok, tmp, common)
        t_ready = time.perf_counter()
        base = eval_loss(setup.model, examples)  # LoRA B starts at 0: the base model, equal for every recipe
        eval_s = time.perf_counter() - t_ready
        counter = TokenCounter(setup.model)
        t0, cpu0 = time.perf_counter(), time.process_time()
        setup.fit()
        train_s, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
        counter.handle.remove()
        steps = setup.steps()
        t1 = time.perf_counter()
        tuned = eval_loss(setup.model, examples)
        eval_s += time.perf_counter() - t1
    model = setup.model
    non_emb = (sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
               - model.get_input_embeddings().weight.numel())
    result: dict[str, Any] = {
        "recipe": recipe, "train_s": train_s, "cpu_s": cpu_s, "steps": steps,
        "real_tokens": counter.real, "fed_tokens": counter.fed, "forwards": counter.calls,
        "import_s": t_imported - t_start, "setup_s": t_ready - t_imported, "eval_s": eval_s,
        "eval_loss_base": base, "eval_loss": tuned, "eval_drop": base - tuned,
        "non_embedding_params": non_emb, "trainable_params": sum(p.numel() for p in model.parameters()
                                                                 if p.requires_grad),
        "threads": torch.get_num_threads(), "settings": setup.settings,
        "log": [line for line in setup.log if "cache" in line.lower() or "recipe" in line.lower()],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "child_wall_s": time.perf_counter() - t_start,
    }
    out.write_text(json.dumps(result), encoding="utf-8")
