"""Start-up stays light (issue 19 item 3): the heavy libraries are imported only by the code that needs them. A
LoRA sft run through the real command line (`tuneforge train`, to the end: data, model, method, optimizer, steps,
evaluation, report) never imports trl, bitsandbytes, mlflow, fastapi, sklearn or datasets; `tuneforge validate`
and `tuneforge --help` do not import peft either. A behaviour check in a fresh interpreter, not a timing threshold,
so it cannot rot with the machine's load. bench/startup.py measures the seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

import tiny

HEAVY = ("trl", "bitsandbytes", "mlflow", "fastapi", "sklearn", "datasets", "optuna", "uvicorn")

CHILD = """
import json, sys
from tuneforge import cli
code = cli.main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def _imported(*argv: str) -> tuple[int, set[str]]:
    """Run `tuneforge ARGV` in a fresh interpreter; its exit code and the top-level packages it imported."""
    done = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    last = json.loads(done.stdout.strip().splitlines()[-1])
    return last["code"], set(last["modules"])


def _config(tmp_path: Path, model_dir: Path) -> Path:
    raw = {
        "model": str(model_dir), "stage": "sft",
        "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0},  # default targets: peft's mapping
        "data": {"train": str(tiny.write_jsonl(tmp_path / "train.jsonl", tiny.toy_sft_rows(16))),
                 "eval": str(tiny.write_jsonl(tmp_path / "eval.jsonl", tiny.toy_sft_rows(3, seed=1)))},
        "training": {"max_steps": 2, "batch_size": 4, "max_length": 64, "progress": False, "precision": "fp32",
                     "eval_steps": 1, "save_steps": 1},
        "eval": {"generate_samples": 2, "max_new_tokens": 4},
        "output_dir": str(tmp_path / "run"), "seed": 0,
    }
    path = tmp_path / "lora.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_lora_sft_run_imports_no_heavy_library(tmp_path, tiny_model_dir):
    code, modules = _imported("train", str(_config(tmp_path, tiny_model_dir)))
    assert code == 0
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()  # the run went to the end
    assert "peft" in modules and "torch" in modules  # what it needs, it imported
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_validate_and_help_import_no_peft(tmp_path, tiny_model_dir):
    code, modules = _imported("validate", str(_config(tmp_path, tiny_model_dir)))
    assert code == 0
    assert not modules & {"peft", *HEAVY}, sorted(modules & {"peft", *HEAVY})
    done = subprocess.run([sys.executable, "-c", "import json, sys; from tuneforge import cli\n"
                           "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
                           "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"],
                          capture_output=True, text=True, timeout=600)
    modules = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert "train" in done.stdout and not modules & {"peft", "torch", "transformers", *HEAVY}, \
        sorted(modules & {"peft", "torch", "transformers", *HEAVY})
