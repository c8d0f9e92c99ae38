"""merge: merged model == adapter model (reloaded from disk, fp32, 1e-4) for every mergeable method, a reward
run included (reloaded as the scorer it is), and a clear refusal for the others. compare: a complete table on
the tiny model, surviving a failing method; methods it switches to start from their own default rate."""

import json

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

import tiny
from tuneforge import compare as compare_module
from tuneforge.compare import method_config
from tuneforge.errors import UserError
from tuneforge.export.merge import _logits, merge
from tuneforge.methods import METHODS
from tuneforge.runs import load_run
from tuneforge.stages import STAGES

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}


@pytest.mark.parametrize("method", [
    {"name": "lora", **LORA}, {"name": "lora", **LORA, "use_dora": True}, {"name": "ia3"}, {"name": "qlora", **LORA},
], ids=["lora", "dora", "ia3", "qlora"])
def test_merge_equals_adapter(method, make_config, tmp_path):
    cfg = make_config(method=method, training__max_steps=6, eval__generate_samples=2)
    run = STAGES["sft"](cfg)
    out = merge(run, tmp_path / "merged")
    model, tok, _ = load_run(run, dequantize=True)
    merged = AutoModelForCausalLM.from_pretrained(out)  # plain transformers
    texts = [json.loads(x)["prompt"] for x in (run / "generations.jsonl").read_text().splitlines()]
    assert torch.allclose(_logits(model, tok, texts), _logits(merged, tok, texts), atol=1e-4, rtol=0)
    assert json.loads((out / "merge.json").read_text())["max_abs_logit_diff"] <= 1e-4
    assert not any("lora" in k or "ia3" in k for k in merged.state_dict())


def test_merge_of_a_reward_lora_run_is_the_same_scorer(make_config, tmp_path):
    """A reward run is a scorer: merge reloads it with its sequence-classification head, and the merged model's
    scores equal the adapter model's (it used to be reloaded as a causal LM)."""
    rows = [{"prompt": "what is it", "chosen": f"{w} thanks", "rejected": w} for w in tiny.FILLER * 2]
    data = tiny.write_jsonl(tmp_path / "pairs.jsonl", rows)
    run = STAGES["reward"](make_config(stage="reward", data__train=str(data), data__eval=None, training__max_steps=4,
                                       training__learning_rate=1e-2, eval__before=False))
    out = merge(run, tmp_path / "merged")
    model, tok, _ = load_run(run)
    merged = AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32).eval()
    texts = ["what is it fine thanks", "what is it the cat", "one two three"]
    want, got = _logits(model, tok, texts), _logits(merged, tok, texts)
    assert want.shape == (3, 1) and torch.allclose(want, got, atol=1e-4, rtol=0)
    assert json.loads((out / "merge.json").read_text())["max_abs_logit_diff"] <= 1e-4
    assert not any("lora" in k for k in merged.state_dict())


def test_compare_switches_methods_with_their_own_default_learning_rate(make_config, tmp_path):
    cfg = make_config(method={"name": "lora", "r": 4, "target_modules": "all-linear"})
    assert not hasattr(compare_module, "DEFAULT_LR")  # the methods carry their rate
    for name in METHODS:
        raw = method_config(cfg, name, {}, tmp_path)
        want = cfg.training.learning_rate if name == "lora" else None  # None: the run takes the method's default_lr
        assert raw["training"]["learning_rate"] == want and raw["method"]["name"] == name
    assert method_config(cfg, "qlora", {}, tmp_path)["method"]["r"] == 4  # same kind: the options carry over
    assert method_config(cfg, "ia3", {}, tmp_path)["method"] == {"name": "ia3"}  # another kind: its defaults
    assert method_config(cfg, "ia3", {"ia3": 1e-2}, tmp_path)["training"]["learning_rate"] == 1e-2


@pytest.mark.parametrize("name", ["adapter", "prompt", "full"])
def test_merge_refuses_methods_without_weight_deltas(name, make_config, tmp_path):
    run = STAGES["sft"](make_config(method={"name": name}, training__max_steps=2, eval__generate_samples=0,
                                    training__learning_rate=1e-3))
    with pytest.raises(UserError, match=f"merge does not apply to method '{name}'"):
        merge(run)
    assert not (run / "merged").exists()


@pytest.mark.slow  # three methods, each trained in its own process by compare itself
def test_compare_table_survives_a_failing_method(make_config, tmp_path, run_cli, capsys):
    cfg = make_config(training__max_steps=4, eval__generate_samples=2, output_dir=str(tmp_path / "base"))
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    code = run_cli(["compare", str(path), "--methods", "lora,full,prompt", "--lr", "full=-1",
                    "--output", str(tmp_path / "cmp")])
    err = capsys.readouterr().err
    assert code == 1, err  # one method failed; the others ran
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    rows = {r["method"]: r for r in data["rows"]}
    assert rows["full"]["status"].startswith("failed") and "learning_rate" in rows["full"]["status"]
    for name in ("lora", "prompt"):
        r = rows[name]
        assert r["status"] == "ok" and r["trainable_params"] > 0 and r["stored_mb"] > 0 and r["peak_rss_mb"] > 0
        assert r["eval_loss_after"] < r["eval_loss_before"]
    assert rows["lora"]["trainable_percent"] > rows["prompt"]["trainable_percent"]
    assert (rows["lora"]["learning_rate"], rows["lora"]["learning_rate_source"]) == (3e-2, "config")
    assert (rows["prompt"]["learning_rate"], rows["prompt"]["learning_rate_source"]) == (
        METHODS["prompt"].default_lr, "method default")
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| lora | ok | 0.03 (config) |" in md and "| full | failed" in md
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 0


def test_compare_rejects_unknown_method_before_running(make_config, tmp_path, run_cli, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(make_config().model_dump(mode="json")))
    assert run_cli(["compare", str(path), "--methods", "lora,lorra"]) == 2
    assert "unknown method 'lorra'" in capsys.readouterr().err
    assert not (tmp_path / "run-compare").exists()  # refused before anything ran or was written
