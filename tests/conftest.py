import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# token caches built by tests go to a folder of their own, not the user's cache (the converted embedded model's
# cache in $TUNEFORGE_HOME is still shared, so it is converted once)
os.environ.setdefault("TUNEFORGE_DATA_CACHE", tempfile.mkdtemp(prefix="tuneforge-test-data-"))

import gc  # noqa: E402
import signal  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny models on a shared 2-core CPU: one thread is faster than two that spin and wait on each other (measured:
# 72 s vs 83 s on an idle machine for 136 tiny-model tests, 32-35 s vs 130-186 s for 69 while others trained).
# Tests marked `real` (the 135M embedded model, whose matmuls are big enough to split) get the cores back.
REAL_THREADS = max(1, min(2, os.cpu_count() or 1))
torch.set_num_threads(1)

import tiny  # noqa: E402

pytest_plugins = ["pytester"]  # tests/reliability/test_suite_markers.py runs a collection in this process


@pytest.fixture(scope="module", autouse=True)
def _imports_frozen():
    """Every library is imported once the test modules are: freeze those ~600k objects out of the garbage
    collector, so the full collections (`eval` and the loaders call gc.collect after each model, ~0.5 s each)
    walk only what the tests create (measured: 29 s instead of 33-38 s for 69 inference/eval/sft tests). Checked
    at each module's start: a module that calls gc.unfreeze() (tests/stages/test_matrix.py) thaws everything."""
    if not gc.get_freeze_count():
        gc.collect()
        gc.freeze()


@pytest.fixture(autouse=True)
def _threads_for_real_models(request):
    if request.node.get_closest_marker("real") is None:
        yield
        return
    torch.set_num_threads(REAL_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(1)


@pytest.fixture
def run_cli(monkeypatch):
    """`tuneforge ARGV` in this process: `run_cli(["train", path])` returns the exit code the console script exits
    with (a UserError is 2; with --debug the exception propagates, which the script prints as a traceback).
    The process is left as it was found: global warning/logging state (cli._quiet_libraries is skipped), the
    environment and the signal handlers (`train --nproc` runs torch's launcher in this process)."""
    from tuneforge import cli as cli_module

    monkeypatch.setattr(cli_module, "_quiet_libraries", lambda: None)
    env = dict(os.environ)
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):  # as from a shell, not from inside a launcher
        os.environ.pop(key, None)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)}
    yield cli_module.main
    for s, handler in handlers.items():
        signal.signal(s, handler)
    os.environ.clear()
    os.environ.update(env)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return tiny.build_tiny(tmp_path_factory.mktemp("tiny-llama"))


SFT_SYSTEM = "answer the question ."


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory, tiny_model_dir) -> Path:
    """One short LoRA SFT run on the tiny model (with a system prompt; its before/after evaluation covers every
    eval row: 7 prompts, 7 loss samples), shared by every test that only reads a run: inference, eval, interop,
    chaining. Read-only: a test that changes it copies it first (shutil.copytree into tmp_path); the session
    fails at the end if any file in it changed. Its data files lie beside it (run.parent / "eval.jsonl")."""
    from tuneforge.config.schema import Config
    from tuneforge.stages import STAGES

    root = tmp_path_factory.mktemp("sft-run")
    cfg = Config.model_validate({
        "model": str(tiny_model_dir), "stage": "sft",
        "method": {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
        "data": {"train": str(tiny.write_jsonl(root / "train.jsonl", tiny.toy_sft_rows(42))),
                 "eval": str(tiny.write_jsonl(root / "eval.jsonl", tiny.toy_sft_rows(7, seed=1))),
                 "system_prompt": SFT_SYSTEM},
        "training": {"max_steps": 20, "learning_rate": 3e-2, "batch_size": 4,
                     "warmup_ratio": 0.0, "lr_scheduler": "constant", "max_length": 128, "progress": False,
                     "precision": "fp32"},
        "eval": {"generate_samples": 7, "max_new_tokens": 12},
        "output_dir": str(root / "run"), "seed": 0,
    })
    run = STAGES["sft"](cfg)
    before = _snapshot(root)
    yield run
    after = _snapshot(root)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"a test changed the shared sft_run (copy it into tmp_path first): {changed}"


@pytest.fixture
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def toy_data(tmp_path) -> dict[str, Path]:
    rows = tiny.toy_sft_rows(42)
    return {
        "train": tiny.write_jsonl(tmp_path / "train.jsonl", rows),
        "eval": tiny.write_jsonl(tmp_path / "eval.jsonl", tiny.toy_sft_rows(7, seed=1)[:7]),
    }


@pytest.fixture
def make_config(tmp_path, tiny_model_dir, toy_data):
    """A config dict for the tiny model and toy data; tests override what they need."""

    def make(**overrides):
        from tuneforge.config.schema import Config

        raw = {
            "model": str(tiny_model_dir),
            "stage": "sft",
            "method": {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
            "data": {"train": str(toy_data["train"]), "eval": str(toy_data["eval"])},
            "training": {"max_steps": 30, "learning_rate": 3e-2, "batch_size": 4, "warmup_ratio": 0.0,
                         "lr_scheduler": "constant", "max_length": 128, "progress": False, "precision": "fp32"},
            "eval": {"generate_samples": 3, "max_new_tokens": 12},
            "output_dir": str(tmp_path / "run"),
            "seed": 0,
        }
        for key, value in overrides.items():
            node = raw
            parts = key.split("__")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = value
        return Config.model_validate(raw)

    return make


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return tiny.build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
def cls_data(tmp_path) -> dict[str, Path]:
    return {
        "train": tiny.write_jsonl(tmp_path / "cls_train.jsonl", tiny.toy_cls_rows(64)),
        "eval": tiny.write_jsonl(tmp_path / "cls_eval.jsonl", tiny.toy_cls_rows(24, seed=1)),
    }
