"""--device (and the run's training.device) on merge, export, data bias, hpo and compare, through the one helper in
tuneforge/device.py: a device this machine lacks is exit 2 naming the flag (or the key) and what the machine has,
before anything loads or is written; the CPU works. No GPU here: `cuda` is the missing device."""

import shutil

import pytest
import torch
import yaml

from tuneforge.device import device_overrides, for_command, place

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def _config_file(make_config, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(make_config().model_dump(mode="json")))
    return path


@pytest.mark.parametrize("command", ["merge", "merge --combine", "export", "data bias", "hpo", "compare", "eval"])
def test_device_cuda_is_exit_2_naming_the_flag_and_what_the_machine_has(command, sft_run, make_config, tmp_path,
                                                                      run_cli, capsys):
    out = tmp_path / "out"
    config = _config_file(make_config, tmp_path)
    argv = {"merge": ["merge", str(sft_run), "--output", str(out)],
            "merge --combine": ["merge", "--combine", str(sft_run), str(sft_run), "--output", str(out)],
            "export": ["export", str(sft_run), "--output", str(out / "m.gguf")],
            "data bias": ["data", "bias", str(sft_run), "--output", str(out)],
            "hpo": ["hpo", str(config), "--space", str(tmp_path / "space.yaml"), "--output", str(out)],
            "compare": ["compare", str(config), "--output", str(out)],
            "eval": ["eval", str(sft_run), "--data", str(sft_run.parent / "eval.jsonl"), "--output", str(out)]}[command]
    assert run_cli([*argv, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "key '--device': 'cuda' is not available on this machine, which has cpu" in err
    assert not out.exists() and not (sft_run / "merged").exists()  # nothing loaded, nothing written


@pytest.mark.parametrize("command", ["merge", "data bias", "hpo", "compare", "eval"])
def test_training_device_of_the_run_or_config_is_checked_when_no_flag(command, sft_run, make_config, tmp_path,
                                                                    run_cli, capsys):
    run = tmp_path / "run-copy"
    shutil.copytree(sft_run, run)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["training"]["device"] = "cuda:1"
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    config = _config_file(make_config, tmp_path)
    out = tmp_path / "out"
    argv = {"merge": ["merge", str(run), "--output", str(out)],
            "data bias": ["data", "bias", str(run), "--output", str(out)],
            "hpo": ["hpo", str(config), "training.device=cuda:1", "--space", "s.yaml", "--output", str(out)],
            "compare": ["compare", str(config), "training.device=cuda:1", "--output", str(out)],
            "eval": ["eval", str(run), "--data", str(sft_run.parent / "eval.jsonl"), "--output", str(out)]}[command]
    assert run_cli(argv) == 2
    assert "key 'training.device': 'cuda:1' is not available on this machine, which has cpu" in capsys.readouterr().err
    assert not out.exists()


def test_merge_and_bias_run_on_the_cpu_when_asked(sft_run, tmp_path, run_cli):
    run = tmp_path / "run-copy"
    shutil.copytree(sft_run, run)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["training"]["device"] = "cuda"  # the flag wins over the run's (GPU) device
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    assert run_cli(["merge", str(run), "--output", str(tmp_path / "merged"), "--device", "cpu"]) == 0
    assert (tmp_path / "merged" / "merge.json").is_file()
    assert run_cli(["data", "bias", str(run), "--output", str(tmp_path / "bias"), "--device", "cpu"]) == 0
    assert (tmp_path / "bias" / "bias.json").is_file()


def test_helpers_pick_the_flag_then_the_config_and_pass_it_on():
    assert for_command(None, None) == torch.device("cpu") == for_command("cpu", "cuda")  # the flag wins
    assert device_overrides(None, ["a=1"]) == ["a=1"]
    assert device_overrides(" cpu ", ["a=1"]) == ["a=1", "training.device=cpu"]  # last override wins in load_config


def test_place_leaves_a_model_spread_by_a_device_map_where_it_is():
    model = torch.nn.Linear(2, 2)
    moved = []
    model.to = lambda *a, **k: moved.append(a)  # what place would do to it
    model.hf_device_map = {"layers.0": 0, "layers.1": 1}  # accelerate spread it over two GPUs
    place(model, torch.device("cuda", 0))
    model.hf_device_map = {"": 0}
    place(model, torch.device("cuda", 0))
    assert moved == [(torch.device("cuda", 0),)]  # only the single-device model was moved
