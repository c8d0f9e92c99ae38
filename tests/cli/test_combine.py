"""merge --combine: two tiny LoRA sft runs on different tasks combine through peft's add_weighted_adapter; the
combination with weights (1, 0) is run A, the merged model equals the combined adapter model (reloaded from disk,
fp32, 1e-4), ties / dare verify too, and runs that cannot combine (full fine-tuning, another base, unequal ranks
for linear) exit 2 naming the run and what differs, leaving nothing behind."""

import json
import shutil

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

import tiny
from tuneforge.config.schema import Config
from tuneforge.models.verify import logits
from tuneforge.runs import load_run
from tuneforge.stages import STAGES

TEXTS = ["what color is the sky ?", "what comes after two ?", "the capital of spain is"]


def _count_rows(n: int) -> list[dict]:
    """Task B: the next number word, a task task A (colors and capitals) never sees."""
    words = "one two three four five six seven eight nine ten".split()
    return [{"prompt": f"what comes after {words[i % 9]} ?", "completion": f"{words[i % 9 + 1]} comes after "
             f"{words[i % 9]} ."} for i in range(n)]


def _train(root, tiny_model_dir, name, rows, method=None, steps=12):
    cfg = Config.model_validate({
        "model": str(tiny_model_dir), "stage": "sft",
        "method": method or {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
        "data": {"train": str(tiny.write_jsonl(root / f"{name}.jsonl", rows)), "eval": None},
        "training": {"max_steps": steps, "learning_rate": 3e-2, "batch_size": 4, "warmup_ratio": 0.0,
                     "lr_scheduler": "constant", "max_length": 64, "progress": False, "precision": "fp32"},
        "eval": {"generate_samples": 2, "max_new_tokens": 4, "before": False},
        "output_dir": str(root / name), "seed": 0,
    })
    return STAGES["sft"](cfg)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("combine")
    return {"a": _train(root, tiny_model_dir, "a", tiny.toy_sft_rows(24)),
            "b": _train(root, tiny_model_dir, "b", _count_rows(24))}


def _merged_logits(path, tokenizer):
    return logits(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), tokenizer, TEXTS)


def _run_logits(run):
    model, tokenizer, _ = load_run(run)
    return logits(model, tokenizer, TEXTS), tokenizer


def test_linear_weights_one_zero_reproduce_run_a(runs, run_cli, tmp_path, capsys):
    out = tmp_path / "ab"
    code = run_cli(["merge", "--combine", str(runs["a"]), str(runs["b"]), "--how", "linear", "--weights", "1,0",
                    "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    want, tokenizer = _run_logits(runs["a"])
    got = _merged_logits(out, tokenizer)
    assert torch.allclose(got, want, atol=1e-4, rtol=0)
    assert not torch.allclose(got, _run_logits(runs["b"])[0], atol=1e-2)  # run B's adapter is not in it
    report = json.loads((out / "merge.json").read_text())
    assert report["runs"] == [str(runs["a"]), str(runs["b"])] and report["weights"] == [1.0, 0.0]
    assert report["how"] == "linear" and report["density"] is None and report["max_abs_logit_diff"] <= 1e-4
    assert not any("lora" in k for k in AutoModelForCausalLM.from_pretrained(out).state_dict())


def test_combined_adapter_model_equals_the_merged_model(runs, run_cli, tmp_path):
    out = tmp_path / "half"
    assert run_cli(["merge", "--combine", str(runs["a"]), str(runs["b"]), "--weights", "0.5,0.5",
                    "--output", str(out)]) == 0
    model, tokenizer, _ = load_run(runs["a"])  # rebuilt here, independently of the command
    model.load_adapter(str(runs["b"]), adapter_name="b")
    model.base_model.add_weighted_adapter(["default", "b"], [0.5, 0.5], "ab", combination_type="linear")
    model.set_adapter("ab")
    want = logits(model.eval(), tokenizer, TEXTS)
    got = _merged_logits(out, tokenizer)
    assert torch.allclose(got, want, atol=1e-4, rtol=0)
    for run in ("a", "b"):  # a real combination: neither run alone
        assert not torch.allclose(got, _run_logits(runs[run])[0], atol=1e-3)


@pytest.mark.parametrize("how", ["ties", "dare_ties", "dare_linear"])
def test_ties_and_dare_combine_and_verify(how, runs, run_cli, tmp_path, capsys):
    out = tmp_path / how
    code = run_cli(["merge", "--combine", str(runs["a"]), str(runs["b"]), "--how", how, "--weights", "0.7,0.3",
                    "--density", "0.6", "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "merge.json").read_text())
    assert report["how"] == how and report["density"] == 0.6 and report["max_abs_logit_diff"] <= 1e-4
    assert torch.isfinite(_merged_logits(out, _run_logits(runs["a"])[1])).all()


def test_full_fine_tuning_run_is_refused(runs, tiny_model_dir, run_cli, tmp_path, capsys):
    full = _train(tmp_path, tiny_model_dir, "full", tiny.toy_sft_rows(8), method={"name": "full"}, steps=2)
    out = tmp_path / "out"
    assert run_cli(["merge", "--combine", str(runs["a"]), str(full), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(full) in err and "full run cannot be combined" in err
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_another_base_is_refused(runs, run_cli, tmp_path, capsys):
    other = tmp_path / "b-other"
    shutil.copytree(runs["b"], other)
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["model"] = str(tiny.build_tiny(tmp_path / "other-base"))
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert run_cli(["merge", "--combine", str(runs["a"]), str(other), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"cannot combine {other}" in err and "base differs" in err and str(tmp_path / "other-base") in err
    assert not out.exists()


def test_unequal_ranks_refused_for_linear_but_cat_combines(runs, tiny_model_dir, run_cli, tmp_path, capsys):
    r8 = _train(tmp_path, tiny_model_dir, "r8", _count_rows(8), steps=2,
                method={"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"})
    args = ["merge", "--combine", str(runs["a"]), str(r8)]
    assert run_cli([*args, "--how", "ties", "--output", str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err
    assert "r differs (8 vs 4)" in err and "--how cat" in err and not (tmp_path / "no").exists()
    assert run_cli([*args, "--how", "cat", "--weights", "1,0", "--output", str(tmp_path / "cat")]) == 0
    want, tokenizer = _run_logits(runs["a"])
    assert torch.allclose(_merged_logits(tmp_path / "cat", tokenizer), want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("how", ["linear", "cat"])
def test_rslora_runs_combine_at_their_own_scale(how, runs, tiny_model_dir, run_cli, tmp_path, capsys):
    """peft's add_weighted_adapter folds each source's scaling into the weights and gives the combination
    lora_alpha = r, which is scale 1 for plain LoRA but sqrt(r) for rsLoRA: weights 1,0 must still give run A."""
    rs = {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear", "use_rslora": True}
    a = _train(tmp_path, tiny_model_dir, "rs_a", tiny.toy_sft_rows(24), method=rs)
    b = _train(tmp_path, tiny_model_dir, "rs_b", _count_rows(24), method=rs)
    out = tmp_path / "rs_ab"
    assert run_cli(["merge", "--combine", str(a), str(b), "--how", how, "--weights", "1,0",
                    "--output", str(out)]) == 0, capsys.readouterr().err
    want, tokenizer = _run_logits(a)
    assert torch.allclose(_merged_logits(out, tokenizer), want, atol=1e-4, rtol=0)


def test_bad_arguments_exit_2(runs, run_cli, tmp_path, capsys):
    a, b = str(runs["a"]), str(runs["b"])
    assert run_cli(["merge", "--combine", a, b, "--weights", "1", "--output", str(tmp_path / "x")]) == 2
    assert "1 weights for 2 runs" in capsys.readouterr().err
    assert run_cli(["merge", "--combine", a, b, "--how", "average", "--output", str(tmp_path / "x")]) == 2
    assert "--how 'average'" in capsys.readouterr().err
    assert run_cli(["merge", "--combine", a, b, "--density", "0.5", "--output", str(tmp_path / "x")]) == 2
    assert "--density applies to" in capsys.readouterr().err
    assert run_cli(["merge", "--combine", a, b]) == 2 and "needs --output" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_merge_example_data_and_report_script(tmp_path):
    """The dates generator reproduces the shipped data (eval years held out), and the report script copies each
    figure from eval.json / merge.json into the table."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, str(root / "scripts/make_dates_data.py"), "--out", str(tmp_path / "d")], check=True,
                   capture_output=True)
    for name in ("train.jsonl", "eval.jsonl"):
        assert (tmp_path / "d" / name).read_bytes() == (root / "examples/data/dates" / name).read_bytes()
    years = {s: {json.loads(x)["output"][:4] for x in (root / "examples/data/dates" / f"{s}.jsonl").open()}
             for s in ("train", "eval")}
    assert not years["train"] & years["eval"]

    def write_eval(name, models):
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval.json").write_text(json.dumps({"models": models}))

    for task in ("orders", "dates"):
        for run in ("orders", "dates"):
            write_eval(f"eval-{task}-{run}", {"base": {"exact_match": 0.0, "loss": 3.0},
                                              "tuned": {"exact_match": 0.5 if task == run else 0.125, "loss": 1.0}})
        write_eval(f"eval-{task}-ab", {"ab": {"exact_match": 0.25, "loss": 2.0}})
    (tmp_path / "ab").mkdir()
    (tmp_path / "ab" / "merge.json").write_text(json.dumps({"how": "ties", "weights": [0.5, 0.5], "density": 0.5,
                                                            "max_abs_logit_diff": 2e-5}))
    out = subprocess.run([sys.executable, str(root / "scripts/merge_report.py"), str(tmp_path)], check=True,
                         capture_output=True, text=True).stdout
    assert "| adapter orders | 0.500 | 1.000 | 0.125 | 1.000 |" in out
    assert "| ab: ties 0.5,0.5, density 0.5 (verified: max logit diff 2.0e-05) | 0.250 | 2.000 | 0.250 | 2.000 |" in out
    assert (tmp_path / "report.md").read_text() == out
    shutil.rmtree(tmp_path / "eval-dates-orders")  # the other task's adapter is optional
    out = subprocess.run([sys.executable, str(root / "scripts/merge_report.py"), str(tmp_path)], check=True,
                         capture_output=True, text=True).stdout
    assert "| adapter orders | 0.500 | 1.000 | - | - |" in out and "| adapter dates | 0.125 | 1.000 | 0.500 |" in out
