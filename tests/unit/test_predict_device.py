"""`tuneforge predict` takes the run's training.device when --device is not given (as merge, eval, export do):
a run saved with a device this machine lacks is exit 2 naming the key, before the model loads; --device wins."""

import shutil

import yaml


def test_predict_uses_the_run_s_training_device_unless_the_flag_says_otherwise(sft_run, tmp_path, run_cli, capsys):
    run = tmp_path / "run-copy"
    shutil.copytree(sft_run, run)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["training"]["device"] = "cuda:1"
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    out = tmp_path / "preds.jsonl"
    argv = ["predict", str(run), "--input", str(sft_run.parent / "eval.jsonl"), "--output", str(out)]
    assert run_cli(argv) == 2
    assert "key 'training.device': 'cuda:1' is not available on this machine, which has cpu" in capsys.readouterr().err
    assert run_cli([*argv, "--device", "cpu"]) == 2  # the flag wins: past the device, an sft run is not a classifier
    err = capsys.readouterr().err
    assert "training.device" not in err and "classif" in err
    assert not out.exists()
