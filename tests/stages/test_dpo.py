"""The dpo stage on the tiny Llama (ChatML template): on a separable preference set the DPO loss falls and the
preference metrics rise; with LoRA the reference is the adapter-disabled policy (no second model) and scores
exactly as the untouched base; full fine-tuning trains against TRL's frozen copy; this module's loss equals
TRL's for every loss type; prompt tokens are not trained and each response ends on EOS; malformed rows exit 2
naming file:line with nothing written; SIGINT leaves a checkpoint that resumes to the uninterrupted run's losses;
a saved run reloads and chains. Non-finite steps and weights: test_dpo_nonfinite.py."""

import json
import math
import os
import signal

import pytest
import stage_kit as kit
import torch

import tiny
from tuneforge.config.load import dump_config
from tuneforge.data.dpo_pairs import load_dpo_examples
from tuneforge.data.load import load_records
from tuneforge.data.templates import render
from tuneforge.errors import DataError, TrainingInterrupted
from tuneforge.fsutil import write_text_atomic
from tuneforge.methods import METHODS, MethodContext, count_params
from tuneforge.models import load_model, load_tokenizer
from tuneforge.stages import dpo, skeleton
from tuneforge.train import hf_bridge

LORA = {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}


@pytest.fixture
def dpo_config(make_config, tmp_path):
    return make_dpo_config(make_config, tmp_path)


def make_dpo_config(make_config, tmp_path):
    """A config factory: the tiny model on separable preference pairs (train 64, eval 32), overrides on top."""
    files = kit.preference_files(tmp_path, 64, 32)
    return lambda **overrides: kit.preference_config(make_config, files, "dpo",
                                                      **{"output_dir": str(tmp_path / "run"), **overrides})


def setup(cfg, tmp_path):
    """(tokenizer, train examples, eval examples, base model) as the stage builds them."""
    tok = load_tokenizer(cfg.model)
    train, _ = load_dpo_examples(cfg, tok, load_records(cfg.data.train))
    evals, _ = load_dpo_examples(cfg, tok, load_records(cfg.data.eval))
    torch.manual_seed(cfg.seed)
    return tok, train, evals, load_model(cfg.model)


def trainer_for(cfg, model, tok, train, tmp_path, *extra):
    guard = hf_bridge.GuardCallback(cfg.training.max_bad_steps)
    trainer = dpo.build_trainer(cfg, model, tok, train, tmp_path / "run", "fp32", [*extra, guard])
    return trainer, guard


def logps(model, examples):
    return dpo.response_logps(model, examples, 8, "fp32")


def losses(history):
    values = [h["loss"] for h in history]
    assert all(math.isfinite(v) for v in values), values
    return values


def test_lora_dpo_reference_is_the_disabled_adapter_and_reloads(dpo_config, tmp_path):
    cfg = dpo_config(method=LORA, training__max_steps=40)
    tok, train, evals, model = setup(cfg, tmp_path)
    base = logps(model, evals)
    before = dpo.dpo_metrics(base, base, cfg.dpo)
    assert before["loss"] == pytest.approx(math.log(2)) and before["reward_accuracy"] == 0.0
    model = METHODS["lora"].apply(model, cfg.method, MethodContext(cfg.model))
    n_params = count_params(model)
    trainer, _ = trainer_for(cfg, model, tok, train, tmp_path)
    # no second model and no copied adapter: the reference is the policy with its adapter disabled
    assert trainer.ref_model is None and list(model.peft_config) == ["default"] and count_params(model) == n_params
    snapshot = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()

    history = losses(hf_bridge.history_of(trainer))
    assert len(history) == 40 and history[0] == pytest.approx(math.log(2), abs=1e-4)
    assert sum(history[-5:]) / 5 < 0.5 * sum(history[:5]) / 5, history
    as_reference, reference = dpo.reference_of(model, trainer)
    with as_reference():
        ref = logps(reference, evals)
    assert all(torch.allclose(r, b, atol=1e-5) for r, b in zip(ref, base, strict=True))  # untouched base
    policy = logps(model, evals)
    after = dpo.dpo_metrics(policy, ref, cfg.dpo)
    assert after["reward_accuracy"] > before["reward_accuracy"] and after["reward_accuracy"] == 1.0
    assert after["logp_accuracy"] >= 0.9 and after["loss"] < 0.5 * before["loss"], after
    # this module's loss is TRL's (policy != reference now) on the same pairs
    model.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(model, dpo._collate(evals))
    assert float(trl_loss) == pytest.approx(after["loss"], rel=1e-4)

    for name, value in snapshot.items():
        now = dict(model.named_parameters())[name]
        if "lora_" in name:
            assert name.endswith("lora_A.default.weight") or not torch.equal(now, value), f"{name} did not train"
        else:
            assert torch.equal(now, value), f"frozen {name} changed"
    out = tmp_path / "run"
    write_text_atomic(out / "config.yaml", dump_config(cfg))
    skeleton.save_model(model, tok, out, METHODS["lora"])
    from tuneforge.runs import load_run

    loaded, _, _ = load_run(out)
    again = logps(loaded, evals)
    assert all(torch.allclose(a, p, atol=1e-4) for a, p in zip(again, policy, strict=True))


@pytest.mark.parametrize("loss_type,smoothing", [("sigmoid", 0.0), ("sigmoid", 0.2), ("hinge", 0.0), ("ipo", 0.0)])
def test_loss_matches_trl(loss_type, smoothing, dpo_config, tmp_path):
    cfg = dpo_config(method=LORA, dpo={"beta": 0.5, "loss_type": loss_type, "label_smoothing": smoothing})
    tok, train, evals, model = setup(cfg, tmp_path)
    model = METHODS["lora"].apply(model, cfg.method, MethodContext(cfg.model))
    trainer, _ = trainer_for(cfg, model, tok, train, tmp_path)
    with torch.no_grad():  # a policy away from the reference
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    as_reference, reference = dpo.reference_of(model, trainer)
    with as_reference():
        ref = logps(reference, evals[:8])
    ours = dpo.dpo_metrics(logps(model, evals[:8]), ref, cfg.dpo)
    model.eval()
    with torch.no_grad():
        theirs = float(trainer.compute_loss(model, dpo._collate(evals[:8])))
    assert ours["reward_margin"] != 0 and theirs == pytest.approx(ours["loss"], rel=1e-4)


def test_full_finetuning_trains_against_a_frozen_copy(dpo_config, tmp_path):
    cfg = dpo_config(method={"name": "full"}, training__max_steps=12, training__learning_rate=3e-3)
    tok, train, evals, model = setup(cfg, tmp_path)
    base = logps(model, evals)
    trainer, _ = trainer_for(cfg, model, tok, train, tmp_path)
    assert trainer.ref_model is not None and trainer.ref_model is not model
    ref_before = {n: p.detach().clone() for n, p in trainer.ref_model.named_parameters()}
    policy_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    history = losses(hf_bridge.history_of(trainer))
    assert sum(history[-3:]) / 3 < 0.7 * sum(history[:3]) / 3, history
    assert all(torch.equal(p, ref_before[n]) for n, p in trainer.ref_model.named_parameters())
    assert all(not torch.equal(p, policy_before[n]) for n, p in model.named_parameters())
    after = dpo.dpo_metrics(logps(model, evals), logps(trainer.ref_model, evals), cfg.dpo)
    assert after["reward_accuracy"] > 0.5 and after["loss"] < math.log(2)
    assert torch.allclose(logps(trainer.ref_model, evals)[0], base[0], atol=1e-5)


def test_prompt_not_trained_and_responses_end_on_eos(dpo_config, tmp_path):
    cfg = dpo_config(method=LORA)
    tok = load_tokenizer(cfg.model)
    row = {"prompt": "say hello", "chosen": "hello there", "rejected": "no"}
    chat = {"chosen": [{"role": "user", "content": "say hello"}, {"role": "assistant", "content": "hello there"}],
            "rejected": [{"role": "user", "content": "say hello"}, {"role": "assistant", "content": "no"}]}
    path = tiny.write_jsonl(tmp_path / "two.jsonl", [row, chat])
    (ex, ex_chat), _ = load_dpo_examples(cfg, tok, load_records(str(path)))
    assert ex == ex_chat  # strings and chat messages render alike
    assert tok.decode(ex.prompt_ids) == render(tok, [{"role": "user", "content": "say hello"}], True)
    assert tok.decode(ex.chosen_ids) == "hello there<|im_end|>"  # through EOS, not the template's "\n" after it
    assert ex.rejected_ids == [tok.convert_tokens_to_ids("no"), tok.eos_token_id]
    model = load_model(cfg.model)
    trainer, _ = trainer_for(cfg, model, tok, [ex] * 8, tmp_path)
    batch = next(iter(trainer.get_train_dataloader()))  # what training sees
    mask, ids, n = batch["completion_mask"], batch["input_ids"], len(ex.prompt_ids)
    assert mask[:, :n].sum() == 0  # prompt positions carry no loss
    assert mask[0].sum() == len(ex.chosen_ids) and mask[8].sum() == len(ex.rejected_ids)
    assert ids[0, mask[0].bool()].tolist() == ex.chosen_ids and ids[0, mask[0].bool()][-1] == tok.eos_token_id


@pytest.mark.parametrize("bad,message", [
    ({"prompt": "hi", "rejected": "no"}, "missing field 'chosen'"),
    ({"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
      "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "c"}]},
     "must share every turn before their last one"),
])
def test_malformed_rows_exit_2_and_nothing_written(bad, message, dpo_config, tmp_path, capsys):
    path = tiny.write_jsonl(tmp_path / "bad.jsonl", [kit.preference_pairs(1)[0], bad])
    cfg = dpo_config(method=LORA, data__train=str(path), data__eval=None)
    kit.assert_bad_row_refused(cfg, path, message, capsys)
    with pytest.raises(DataError, match=f"{path}:2: "):
        load_dpo_examples(cfg, load_tokenizer(cfg.model), load_records(str(path)))


def test_sigint_saves_a_checkpoint_that_resumes_exactly(dpo_config, tmp_path):
    def interrupt(step, _result):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    common = {"method": LORA, "training__max_steps": 6, "training__eval_steps": 3, "eval__before": False}
    straight = dpo.run(dpo_config(**common, output_dir=str(tmp_path / "straight")))
    cfg = dpo_config(**common)
    with pytest.raises(TrainingInterrupted) as info:
        dpo.run(cfg, on_eval=interrupt)
    assert info.value.signum == signal.SIGINT and info.value.checkpoint.endswith("checkpoint-3")
    saved = tmp_path / "run/checkpoints/checkpoint-3"
    assert (saved / hf_bridge.MARKER).is_file() and (saved / hf_bridge.GUARDS).is_file()
    assert not (tmp_path / "run/adapter_model.safetensors").exists()
    resumed = dpo.run(dpo_config(**common, resume="auto"))

    def log_of(out):
        return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]

    a, b = log_of(straight), log_of(resumed)
    assert [h["step"] for h in b] == list(range(1, 7))
    assert losses(b) == pytest.approx(losses(a), rel=1e-5)
    metrics = json.loads((resumed / "metrics.json").read_text())
    assert metrics["train"]["resumed_from"].endswith("checkpoint-3") and metrics["train"]["steps"] == 6
    whole, train = json.loads((straight / "metrics.json").read_text())["train"], metrics["train"]
    assert (train["tokens"], train["pairs"]) == (whole["tokens"], whole["pairs"])  # both processes' batches
    processes = train["process_wall_seconds"]  # the stopped process's seconds, then the resumed one's
    assert len(processes) == 2 and train["wall_seconds"] == pytest.approx(sum(processes))


def test_stage_writes_the_run_and_chains(dpo_config, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path / "home"))
    cfg = dpo_config(method=LORA, training__max_steps=12, training__report_to=["tensorboard"])
    out = dpo.run(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    before, after = metrics["eval_before"], metrics["eval_after"]
    assert before["loss"] == pytest.approx(math.log(2)) and before["reward_margin"] == 0.0
    assert after["reward_accuracy"] > before["reward_accuracy"] and after["reward_margin"] > 0
    assert after["logp_accuracy"] >= before["logp_accuracy"]
    train = metrics["train"]
    assert train["steps"] == 12 and train["tokens"] > 0 and train["pairs"] == 12 * 8 and train["tokens_per_second"] > 0
    history = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert sum(h["tokens"] for h in history) == train["tokens"]
    assert sum(losses(history)[-3:]) < sum(losses(history)[:3])
    template = json.loads((out / "template.json").read_text())
    assert template["template"] == "chat" and template["chat_template"] == tiny.CHATML
    assert "## DPO" in (out / "report.md").read_text() and (out / "margins.png").is_file()
    assert list((out / "tensorboard").iterdir()) and not (out / "ref").exists()
    assert (out / "adapter_model.safetensors").is_file()
    from tuneforge.models.load import resolve_model

    merged = resolve_model(str(out))  # `model: <dpo run>` chains: merged once, verified, cached
    chained = load_model(merged)
    tok, _, evals, _ = setup(cfg, tmp_path)
    mean_chosen = float(logps(chained, evals)[0].mean())
    assert mean_chosen == pytest.approx(after["chosen_logp"], abs=1e-3)



def test_an_error_inside_training_leaves_the_signal_handlers_as_they_were(dpo_config):
    """An exception inside trainer.train() skips the Trainer's on_train_end: the guard's SIGINT / SIGTERM handlers
    must still be taken back, or the next Ctrl-C in the process (a notebook, the test suite) only sets a flag."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def boom(step, _result):
        raise RuntimeError(f"boom at step {step}")

    cfg = dpo_config(method=LORA, training__max_steps=4, training__eval_steps=2, eval__before=False)
    with pytest.raises(RuntimeError, match="boom at step 2"):
        dpo.run(cfg, on_eval=boom)
    assert {s: signal.getsignal(s) for s in before} == before
