"""A resumed grpo run's tokens and train seconds count every process of the run (each checkpoint keeps the
totals so far, as dpo / kto's do), not only the last process's steps: the resumed run's tokens equal the
uninterrupted run's."""

from __future__ import annotations

import json

import stage_kit as kit

import tiny
from tuneforge.stages import grpo
from tuneforge.train.preference import TOTALS


def test_resumed_grpo_counts_every_process(make_config, tmp_path):
    prompts = tiny.write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": q} for q in kit.QUESTIONS])
    block = {"rewards": [{"function": kit.REWARD, "kwargs": {"words": ["the"]}}], "num_generations": 4,
             "max_new_tokens": 6, "beta": 0.04}

    def run(steps: int, out: str, **extra) -> dict:
        cfg = make_config(stage="grpo", grpo=block, data__train=str(prompts), data__eval=None, training__batch_size=2,
                          training__max_length=64, training__max_steps=steps, training__save_steps=2,
                          output_dir=str(tmp_path / out), **extra)
        return json.loads((grpo.run(cfg, log=lambda _m: None) / "metrics.json").read_text())["train"]

    straight = run(3, "straight")
    first = run(2, "run")
    kept = json.loads((tmp_path / "run" / "checkpoints" / "checkpoint-2" / TOTALS).read_text())
    assert kept["tokens"] == first["tokens"] > 0 and kept["seconds"] > 0
    resumed = run(3, "run", resume="auto")
    assert resumed["resumed_from"].endswith("checkpoint-2") and resumed["steps"] == 3
    assert resumed["tokens"] == straight["tokens"]  # the same completions, counted over both processes
    assert resumed["train_seconds"] > kept["seconds"]
