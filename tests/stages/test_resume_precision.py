"""precision auto on a CPU is a timing probe (train/precision.py: bf16 only where its matmuls are not slower) and
can come out otherwise on another start, e.g. under load. A resumed run keeps the precision its checkpoint
trained with, says so in the log, and trains on as the checkpoint's precision; an explicit precision is the
user's and is never replaced."""

from __future__ import annotations

import json

from tuneforge.stages import STAGES
from tuneforge.train import precision as precision_mod
from tuneforge.train.checkpoint import list_checkpoints
from tuneforge.train.guards import saved_precision


def _probe(monkeypatch, bf16: bool) -> None:
    monkeypatch.setattr(precision_mod, "cpu_has_bf16", lambda: bf16)


def test_resume_keeps_the_checkpoints_auto_precision(make_config, monkeypatch):
    first = make_config(training__precision="auto", training__max_steps=2, training__save_steps=2,
                        eval__generate_samples=0)
    _probe(monkeypatch, True)  # the first start's probe: bf16
    out = STAGES["sft"].run(first, print)
    (ckpt,) = list_checkpoints(out / "checkpoints")
    assert json.loads((ckpt / "state.json").read_text())["guards"]["precision"] == "bf16"
    assert saved_precision("auto", out / "checkpoints") == "bf16" == saved_precision(str(ckpt), out / "x")
    assert json.loads((out / "metrics.json").read_text())["train"]["precision"] == "bf16"

    _probe(monkeypatch, False)  # the resumed start's probe says fp32
    lines: list[str] = []
    resumed = make_config(training__precision="auto", training__max_steps=4, training__save_steps=2,
                          eval__generate_samples=0, resume="auto", overwrite=True)
    out = STAGES["sft"].run(resumed, lines.append)
    train = json.loads((out / "metrics.json").read_text())["train"]
    assert train["resumed_from"] and train["steps"] == 4
    assert train["precision"] == "bf16"
    assert any("precision auto kept as bf16, the checkpoint's (this start's probe chose fp32)" in x for x in lines)
    last = list_checkpoints(out / "checkpoints")[-1]
    assert json.loads((last / "state.json").read_text())["guards"]["precision"] == "bf16"


def test_an_explicit_precision_is_not_replaced_on_resume(make_config, monkeypatch):
    _probe(monkeypatch, True)
    out = STAGES["sft"].run(make_config(training__precision="auto", training__max_steps=2, training__save_steps=2,
                                        eval__generate_samples=0), print)
    lines: list[str] = []
    out = STAGES["sft"].run(make_config(training__precision="fp32", training__max_steps=4, training__save_steps=2,
                                        eval__generate_samples=0, resume="auto", overwrite=True), lines.append)
    assert json.loads((out / "metrics.json").read_text())["train"]["precision"] == "fp32"
    assert not any("precision auto kept" in x for x in lines)
