"""A run stopped by SIGTERM and resumed: metrics.json's wall_seconds is the sum over both processes
(process_wall_seconds lists each; train/wall.py), and tokens / tokens_per_second count every process's
tokens over every process's training seconds. (dpo, on the Trainer: tests/stages/test_dpo.py's SIGINT test.)"""

import json
import os
import signal
import time

import pytest

from tuneforge.errors import TrainingInterrupted
from tuneforge.stages import STAGES

PAUSE = 1.0  # seconds the first process spends at its step-3 evaluation before the signal


def test_resumed_run_wall_seconds_sum_its_processes(make_config, tmp_path):
    cfg = make_config(training__max_steps=6, training__eval_steps=3, training__save_steps=3, training__report_to=[],
                      eval__before=False, eval__generate_samples=0)
    straight = STAGES["sft"](cfg.model_copy(update={"output_dir": str(tmp_path / "straight")}), log=lambda _m: None)

    def stop(step, _result):
        if step == 3:
            time.sleep(PAUSE)
            os.kill(os.getpid(), signal.SIGTERM)

    started = time.perf_counter()
    with pytest.raises(TrainingInterrupted):
        STAGES["sft"].run(cfg, log=lambda _m: None, on_eval=stop)
    first = time.perf_counter() - started
    out = STAGES["sft"](cfg.model_copy(update={"resume": "auto"}), log=lambda _m: None)

    train = json.loads((out / "metrics.json").read_text())["train"]
    whole = json.loads((straight / "metrics.json").read_text())["train"]
    processes = train["process_wall_seconds"]
    assert len(processes) == 2 and train["wall_seconds"] == pytest.approx(sum(processes))
    assert PAUSE <= processes[0] <= first  # the stopped process up to its checkpoint, its pause included
    assert train["steps"] == whole["steps"] == 6 and train["tokens"] == whole["tokens"]
    assert train["tokens_per_second"] == pytest.approx(train["tokens"] / train["train_seconds"])
    assert len(whole["process_wall_seconds"]) == 1
