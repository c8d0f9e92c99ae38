"""Two processes with gloo on CPU take the same optimizer steps as one process at the same global batch:
per-step losses agree within 1e-4 relative (fp32), and only rank 0 writes the run."""

import json
from pathlib import Path

import pytest
import yaml

from tuneforge.stages import STAGES
from tuneforge.train.checkpoint import list_checkpoints

RTOL = 1e-4  # fp32; the only difference is the order of additions (2 shards + all-reduce vs one pass)


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.slow  # two launches of two ranks, each rank a fresh process
def test_two_gloo_processes_reproduce_single_process_losses(make_config, tmp_path, run_cli, capfd):
    """The launcher (`tuneforge train --nproc 2`) runs in this process, as cli.main; the ranks are processes."""
    kwargs = dict(training__max_steps=6, training__grad_accum=2, training__batch_size=3, training__save_steps=3,
                  training__eval_steps=3, method__dropout=0.0, eval__before=False, eval__generate_samples=0)
    single = STAGES["sft"](make_config(output_dir=str(tmp_path / "single"), **kwargs))
    cfg = make_config(output_dir=str(tmp_path / "ddp"), **kwargs)
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    capfd.readouterr()
    code = run_cli(["train", str(path), "--nproc", "2"])
    captured = capfd.readouterr()
    assert code == 0, captured.err[-3000:]
    out = tmp_path / "ddp"
    assert captured.out.count("done:") == 1  # rank 0 alone reports

    expected, got = _losses(single), _losses(out)
    assert len(got) == len(expected) == 6
    assert got == pytest.approx(expected, rel=RTOL)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (single / "train_log.jsonl").read_text().splitlines()]
    # token counts are the global step's, summed over both ranks
    assert [h["supervised_tokens"] for h in log] == [h["supervised_tokens"] for h in ref]
    metrics = json.loads((out / "metrics.json").read_text())
    ref_metrics = json.loads((single / "metrics.json").read_text())
    assert metrics["eval_after"]["loss"] == pytest.approx(ref_metrics["eval_after"]["loss"], rel=RTOL)
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-0000003", "step-0000006"]
    assert len(list((out / "tensorboard").glob("events.*"))) == 1  # one writer, rank 0's
    assert metrics["train"]["world_size"] == 2 and ref_metrics["train"]["world_size"] == 1

    # resume across processes: restart both ranks from the step-3 checkpoint; the curve is unchanged
    (out / "metrics.json").unlink()
    code = run_cli(["train", str(path), f"resume={out / 'checkpoints' / 'step-0000003'}", "--nproc", "2"])
    assert code == 0, capfd.readouterr().err[-3000:]
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["train"]["resumed_from"].endswith("step-0000003")
    assert _losses(out) == pytest.approx(expected, rel=RTOL)
