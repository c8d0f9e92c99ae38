"""The reward stage, through the real stage, on the tiny Llama (ChatML template, last-token reward, left
padding) and the tiny BERT (no template, [CLS] reward, right padding): pairwise accuracy rises on a separable
preference set, the right parameters train, identical pairs are dropped and counted, malformed rows exit 2
naming file:line, and a saved run reloads to the trained model's rewards at another batch size."""

import json
import random
import re

import pytest
import stage_kit as kit
import torch

import tiny
from tuneforge.config.load import dump_config
from tuneforge.data.load import load_records
from tuneforge.data.preference import load_pair_examples, to_text
from tuneforge.errors import DataError
from tuneforge.models import load_tokenizer
from tuneforge.models.classifier import load_base_classifier, pads_left
from tuneforge.rl.reward_model import load_reward_model
from tuneforge.stages.reward import LABELS, reward_objective, score_pairs
from tuneforge.stages.skeleton import HEADS
from tuneforge.train.loop import train

LORA = {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}
CUE = "thanks"  # the chosen response always contains it, the rejected one never


def toy_pairs(n: int, seed: int = 0) -> list[dict]:
    """Separable preferences: the same filler response, with the cue word inserted into the chosen one."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.sample(tiny.FILLER, 3)
        chosen = list(words)
        chosen.insert(rng.randrange(4), CUE)
        rows.append({"prompt": " ".join(rng.sample(tiny.FILLER, 2)), "chosen": " ".join(chosen),
                     "rejected": " ".join(words)})
    return rows


@pytest.fixture(params=["llama", "bert"])
def reward_config(request, make_config, tiny_model_dir, tiny_bert_dir, tmp_path):
    model = tiny_bert_dir if request.param == "bert" else tiny_model_dir
    train_rows = toy_pairs(64)
    train_rows[5] = {**train_rows[5], "rejected": "  " + train_rows[5]["chosen"] + " "}  # identical once normalised
    data = {"train": tiny.write_jsonl(tmp_path / "pref_train.jsonl", train_rows),
            "eval": tiny.write_jsonl(tmp_path / "pref_eval.jsonl", toy_pairs(32, seed=1))}

    def make(**overrides):
        base = {"model": str(model), "stage": "reward", "data__train": str(data["train"]),
                "data__eval": str(data["eval"]), "training__batch_size": 8, "output_dir": str(tmp_path / "run")}
        return make_config(**{**base, **overrides})

    make.kind = request.param
    return make


CASES = {  # method config, learning rate, predicate over the names that must train
    "full": ({"name": "full"}, 3e-3, lambda n: True),
    "lora": (LORA, 1e-2, lambda n: "lora_" in n or "modules_to_save" in n),
}


@pytest.mark.parametrize("case", list(CASES))
def test_method_trains_reward_and_reloads(case, reward_config):
    method_cfg, lr, should_train = CASES[case]
    cfg = reward_config(method=method_cfg, training__learning_rate=lr, training__max_steps=30,
                        training__report_to=[])
    run = kit.run_captured(cfg)
    model, out = run.model, run.out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["train"]["dropped_identical"] == 1 and metrics["data"]["train"]["examples"] == 63
    trainable = run.trainable()
    assert trainable == {n for n, _ in model.named_parameters() if should_train(n)}

    losses = [json.loads(x)["loss"] for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
    before, after = metrics["eval_before"], metrics["eval_after"]  # held-out pairs
    assert after["accuracy"] >= 0.9 and after["accuracy"] > before["accuracy"] and after["loss"] < before["loss"]
    assert after["margin_mean"] > before["margin_mean"]
    assert after["margin_mean"] == pytest.approx(after["chosen_reward_mean"] - after["rejected_reward_mean"], abs=1e-5)
    # pairs, not rows (2 per pair): an epoch of 63 pairs is 8 steps (7 x 8 + 7); 30 steps = 3 epochs + 6 x 8
    assert metrics["train"]["pairs"] == 3 * 63 + 6 * 8
    for key in ("tokens_per_second", "peak_rss_mb", "wall_seconds", "trainable_params", "total_params"):
        assert metrics["train"][key] > 0
    assert json.loads((out / "labels.json").read_text()) == {"labels": ["reward"]}
    assert (out / "margins.png").stat().st_size > 1000 and "margins.png" in (out / "report.md").read_text()

    after_params = dict(model.named_parameters())
    for name, value in run.start.items():
        if name not in trainable:
            assert torch.equal(after_params[name], value), f"frozen {name} changed"
    assert [n for n in trainable if any(h in n for h in HEADS) and not torch.equal(after_params[n], run.start[n])]

    tok = load_tokenizer(cfg.model)
    eval_pairs, _ = load_pair_examples(cfg, tok, load_records(cfg.data.eval))
    scorer = load_reward_model(out)
    rows = [json.loads(line) for line in open(cfg.data.eval)][:10]
    texts = [to_text(scorer.tokenizer, r["prompt"], r[k], reward_config.kind == "llama")
             for r in rows for k in ("chosen", "rejected")]
    got = torch.tensor(scorer(texts, batch_size=3))  # another batch size: other padding
    chosen, rejected = score_pairs(model.eval(), eval_pairs[:10], tok.pad_token_id, pads_left(tok), 8, "fp32")
    want = torch.stack([chosen, rejected], 1).flatten()
    assert torch.allclose(got, want, atol=1e-5), (got, want)


def test_record_forms_render_alike(make_config, tiny_model_dir, tiny_bert_dir, tmp_path):
    msgs = [{"role": "user", "content": "say hi"}]
    rows = [{"prompt": "say hi", "chosen": "hello there", "rejected": "no"},
            {"prompt": msgs, "chosen": "hello there", "rejected": "no"},
            {"chosen": msgs + [{"role": "assistant", "content": "hello there"}],
             "rejected": msgs + [{"role": "assistant", "content": "no"}]}]
    path = tiny.write_jsonl(tmp_path / "forms.jsonl", rows)
    for model in (tiny_model_dir, tiny_bert_dir):
        cfg = make_config(model=str(model), stage="reward", data__train=str(path))
        tok = load_tokenizer(cfg.model)
        pairs, _ = load_pair_examples(cfg, tok, load_records(str(path)))
        assert pairs[0] == pairs[1] == pairs[2]
    chat = to_text(tok, "say hi", "hello there", templated=False)
    assert chat == "say hi\n\nhello there"
    llama = load_tokenizer(str(tiny_model_dir))
    assert to_text(llama, "say hi", "ok", templated=True) == (
        "<|im_start|>user\nsay hi<|im_end|>\n<|im_start|>assistant\nok<|im_end|>\n")


def test_overlength_policies(make_config, tiny_model_dir, tmp_path):
    from tuneforge.errors import DataError

    row = {"prompt": " ".join(["one"] * 40), "chosen": "yes thanks", "rejected": "no"}
    path = tiny.write_jsonl(tmp_path / "long.jsonl", [row, toy_pairs(1)[0]])
    base = {"model": str(tiny_model_dir), "stage": "reward", "data__train": str(path), "training__max_length": 24}
    tok = load_tokenizer(str(tiny_model_dir))
    pairs, stats = load_pair_examples(make_config(**base), tok, load_records(str(path)))
    assert stats.truncated == 1 and len(pairs) == 2
    full = tok(to_text(tok, row["prompt"], row["chosen"], True))["input_ids"]
    assert pairs[0].chosen.input_ids == full[-24:]  # cut from the left: the response's end stays
    pairs, stats = load_pair_examples(make_config(**base, training__overlength="drop"), tok, load_records(str(path)))
    assert stats.dropped_overlength == 1 and len(pairs) == 1
    with pytest.raises(DataError, match=r"long.jsonl:1: pair has \d+ tokens, over training.max_length=24"):
        load_pair_examples(make_config(**base, training__overlength="error"), tok, load_records(str(path)))


@pytest.mark.parametrize("bad, message", [
    ({"prompt": "hi", "chosen": "ok"}, "missing field 'rejected'"),
    ({"chosen": 3, "rejected": "no"}, "field 'chosen' must be a string or a list of {role, content} messages, got int"),
    ({"chosen": [{"content": "x"}], "rejected": "no"}, "chosen[0] must be an object with string 'role'"),
    ({"chosen": "", "rejected": "no"}, "field 'chosen' is empty"),
])
def test_malformed_rows_exit_2(bad, message, make_config, tiny_model_dir, tmp_path, capsys):
    from tuneforge.cli import main

    path = tiny.write_jsonl(tmp_path / "bad.jsonl", [toy_pairs(1)[0], bad])
    cfg = make_config(model=str(tiny_model_dir), stage="reward", data__train=str(path), data__eval=None)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(dump_config(cfg))
    assert main(["train", str(cfg_path)]) == 2
    err = capsys.readouterr().err  # the stage runs `data check`'s validation first: line and field named
    assert f"{path}:2: " in err and ("'chosen'" in err or "'rejected'" in err or "chosen[0]" in err), err
    assert not (tmp_path / "run").exists()  # nothing written before the data checked out
    with pytest.raises(DataError, match=re.escape(f"{path}:2: ") + ".*" + re.escape(message)):
        load_pair_examples(cfg, load_tokenizer(cfg.model), load_records(str(path)))  # the reader alone


def test_loss_is_mean_over_pairs_and_accumulation_equals_big_batch(make_config, tiny_bert_dir, tmp_path):
    from tuneforge.data.batching import epoch_microbatches
    from tuneforge.stages.reward import pair_metrics

    path = tiny.write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(16))
    histories = []
    for bs, accum in ((4, 1), (1, 4)):
        cfg = make_config(model=str(tiny_bert_dir), stage="reward", method={"name": "full"}, data__train=str(path),
                          training__batch_size=bs, training__grad_accum=accum, training__max_steps=2,
                          training__learning_rate=1e-2, output_dir=str(tmp_path / f"run{bs}"))
        tok = load_tokenizer(cfg.model)
        pairs, _ = load_pair_examples(cfg, tok, load_records(str(path)))
        model = load_base_classifier(cfg, LABELS)
        first = [pairs[i] for i in epoch_microbatches(len(pairs), 4, cfg.seed, 0)[0]]
        expected = pair_metrics(*score_pairs(model, first, tok.pad_token_id, False, 4, "fp32"))["loss"]
        objective = reward_objective(cfg, tok, "fp32")
        result = train(model, pairs, [], cfg, tmp_path / f"run{bs}", "fp32", objective=objective)
        assert result.history[0]["loss"] == pytest.approx(expected, rel=1e-5)  # the mean over the step's 4 pairs
        assert result.history[0]["supervised_tokens"] == 4
        histories.append([h["loss"] for h in result.history])
    assert histories[0] == pytest.approx(histories[1], rel=1e-5)
