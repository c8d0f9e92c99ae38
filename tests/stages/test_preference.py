"""The kto / orpo / simpo / cpo stages on the tiny Llama (ChatML): each trains from a config through
`STAGES[stage].run` on separable pairs (kto: the same pairs as rows, chosen -> true, rejected -> false), its loss
falls and its held-out reward accuracy rises in metrics.json; tuneforge's loss on a batch equals TRL's trainer's
own loss (the metrics are the objective TRL trains); a kto row without a boolean label exits 2 naming file:line,
in training and in `data check`. The matrix (test_matrix.py) adds the method x stage checks: trainable /
frozen parameters, reload, eval / merge / chat / serve / predict."""

import json
import math

import pytest
import stage_kit as kit
import torch

import tiny
from tuneforge.data.dpo_pairs import load_dpo_examples
from tuneforge.data.kto_rows import load_kto_examples
from tuneforge.data.load import load_records
from tuneforge.errors import DataError
from tuneforge.methods import METHODS, MethodContext
from tuneforge.models import load_model, load_tokenizer
from tuneforge.rl import pref_losses as pl
from tuneforge.stages import STAGES
from tuneforge.train.pref_trainers import build_trainer, kto_rows, pair_row
from tuneforge.train.preference import completion_logps, reference_of, response_logps

LORA = {"name": "lora", **kit.LORA}
OBJECTIVES = ["kto", "orpo", "simpo", "cpo"]


@pytest.fixture
def pref_config(make_config, tmp_path):
    files = kit.preference_files(tmp_path, 48, 16)

    def make(stage, **overrides):
        base = {"method": LORA, "training__max_length": 64, "training__epochs": 1.0, "eval__max_samples": 32}
        return kit.preference_config(make_config, files, stage, **{**base, **overrides})

    return make


@pytest.mark.parametrize("stage", OBJECTIVES)
def test_trains_from_a_config_and_held_out_reward_accuracy_rises(stage, pref_config):
    out = STAGES[stage].run(pref_config(stage, training__max_steps=12), log=lambda _m: None)
    metrics = json.loads((out / "metrics.json").read_text())
    before, after = metrics["eval_before"], metrics["eval_after"]
    losses = [json.loads(x)["loss"] for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(losses) == 12 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    assert after["loss"] < before["loss"] and after["reward_accuracy"] > before["reward_accuracy"], (before, after)
    assert after["reward_accuracy"] >= 0.8 and after["reward_margin"] > before["reward_margin"]
    assert metrics[stage] == getattr(pref_config(stage), stage).model_dump()
    assert metrics["train"]["rows" if stage == "kto" else "pairs"] == 12 * 8 and metrics["train"]["tokens"] > 0
    if stage == "kto":  # rows derived from 16 held-out pairs; the base is the reference: every reward 0
        assert before["rows"] == 32 and before["reward_accuracy"] == 0 and before["kl"] == 0
        assert before["loss"] == pytest.approx(0.5) and after["kl"] >= 0 and after["accuracy_over"] == "same_prompt"
    else:
        assert before["pairs"] == 16 and after["logp_accuracy"] >= before["logp_accuracy"]
    report = (out / "report.md").read_text()
    assert f"## {stage.upper()}" in report and (out / "margins.png").is_file()


def _perturbed(cfg):
    tok = load_tokenizer(cfg.model)
    model = METHODS["lora"].apply(load_model(cfg.model), cfg.method, MethodContext(cfg.model))
    with torch.no_grad():  # a policy away from the base (and the kto reference)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
    return tok, model.eval()


@pytest.mark.parametrize("stage", ["orpo", "simpo", "cpo"])
def test_pair_loss_equals_trl(stage, pref_config, tmp_path):
    cfg = pref_config(stage, **{f"{stage}__beta": 0.7})
    tok, model = _perturbed(cfg)
    pairs, _ = load_dpo_examples(cfg, tok, load_records(cfg.data.eval))
    trainer = build_trainer(cfg, model, tok, pairs, tmp_path / "run", "fp32", [])
    with torch.no_grad():
        theirs = float(trainer.compute_loss(model, trainer.data_collator([pair_row(e) for e in pairs[:8]])))
    ours = pl.pair_loss(stage, response_logps(model, pairs[:8], 8, "fp32"), getattr(cfg, stage))
    assert theirs == pytest.approx(float(ours), rel=1e-4)


def test_kto_loss_equals_trl_and_the_reference_is_the_disabled_adapter(pref_config, tmp_path):
    cfg = pref_config("kto", kto={"beta": 0.5, "desirable_weight": 1.0, "undesirable_weight": 1.3})
    tok, model = _perturbed(cfg)
    rows, _ = load_kto_examples(cfg, tok, load_records(cfg.data.train))
    trainer = build_trainer(cfg, model, tok, rows, tmp_path / "run", "fp32", [])
    assert trainer.ref_model is None and list(model.peft_config) == ["default"]  # no second model, no copy
    batch = kto_rows(rows, 8, cfg.seed)[:8]
    with torch.no_grad():
        theirs = float(trainer.compute_loss(model, trainer.data_collator(batch)))
    seqs = [(r["prompt_ids"], r["completion_ids"]) for r in batch]
    kl_seqs = [(r["prompt_ids"], r["KL_completion_ids"]) for r in batch]
    policy, kl_policy = (completion_logps(model, s, 8, "fp32")[0] for s in (seqs, kl_seqs))
    as_reference, reference = reference_of(model, trainer)
    with as_reference():
        ref, kl_ref = (completion_logps(reference, s, 8, "fp32")[0] for s in (seqs, kl_seqs))
    labels = torch.tensor([r["label"] for r in batch])
    assert 0 < int(labels.sum()) < 8 and not torch.allclose(policy, ref)
    ours = pl.kto_loss(policy - ref, labels, pl.kto_kl(kl_policy, kl_ref), cfg.kto)
    assert theirs == pytest.approx(float(ours), rel=1e-4)
    base = load_model(cfg.model).eval()  # the adapter-disabled policy scores as the untouched base
    assert torch.allclose(ref, completion_logps(base, seqs, 8, "fp32")[0], atol=1e-4)


@pytest.mark.parametrize("bad,message", [
    ({"prompt": "hi", "completion": "hello", "label": "yes"}, "field 'label' must be true or false"),
    ({"prompt": "hi", "completion": "hello", "label": 1}, "field 'label' must be true or false"),
    ({"prompt": "hi", "completion": "hello"}, "missing field 'label'"),
    ({"prompt": "hi", "label": True}, "missing field 'completion'"),
])
def test_bad_kto_rows_exit_2_naming_file_line(bad, message, pref_config, tmp_path, capsys):
    from tuneforge.cli import main

    path = tiny.write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "hi", "completion": "hello", "label": True}, bad])
    cfg = pref_config("kto", data__train=str(path), data__eval=None)
    kit.assert_bad_row_refused(cfg, path, message, capsys)
    assert main(["data", "check", str(path), "--stage", "kto"]) == 1  # data check: 1 = problems found
    out = capsys.readouterr()
    assert f"{path}:2: " in out.out + out.err and message in out.out + out.err
    with pytest.raises(DataError, match=f"{path}:2: "):
        load_kto_examples(cfg, load_tokenizer(cfg.model), load_records(str(path)))


def test_kto_with_one_row_per_batch_is_a_config_error(pref_config, tmp_path):
    from tuneforge.errors import ConfigError

    with pytest.raises(ConfigError, match="training.batch_size"):
        STAGES["kto"].run(pref_config("kto", training__batch_size=1), log=lambda _m: None)
    assert not (tmp_path / "run").exists()


def test_kto_rows_tokenize_as_dpo_pairs(pref_config):
    cfg = pref_config("kto")
    tok = load_tokenizer(cfg.model)
    pairs, _ = load_dpo_examples(cfg, tok, load_records(cfg.data.eval.replace("kto_eval", "pairs_eval")))
    rows, stats = load_kto_examples(cfg, tok, load_records(cfg.data.eval))
    assert stats.summary()["desirable"] == stats.summary()["undesirable"] == len(pairs)
    for pair, good, bad in zip(pairs, rows[::2], rows[1::2], strict=True):
        assert good.prompt_ids == bad.prompt_ids == pair.prompt_ids and good.label and not bad.label
        assert good.completion_ids == pair.chosen_ids and bad.completion_ids == pair.rejected_ids
        assert good.completion_ids[-1] == tok.eos_token_id
