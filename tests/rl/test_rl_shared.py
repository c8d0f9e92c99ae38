"""The shared RL pieces: prompt data, reward sources, sampling and log-probs, policy evaluation, chaining."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pytest
import torch

import tiny
from tuneforge.data.dataset import load_train_eval_records
from tuneforge.data.load import load_records
from tuneforge.errors import ConfigError, DataError, ModelError
from tuneforge.models import load_model, load_tokenizer
from tuneforge.rl.policy_eval import evaluate_policy
from tuneforge.rl.prompts import load_prompt_examples
from tuneforge.rl.rewards import contains, exact_match, load_rewards, regex
from tuneforge.rl.sampling import completion_logprobs, logprobs_of, sample, to_batch

PROMPTS = [{"prompt": "say hello", "answer": "hello"}, {"prompt": [{"role": "user", "content": "say hello"}],
                                                         "answer": "hello"},
           {"prompt": "what color is the sky", "answer": "blue"}, {"prompt": "name a fish", "answer": "fish"}]


def count_words(prompts, completions, word="the", **_):
    """A test reward: how often `word` occurs."""
    return [float(c.split().count(word)) for c in completions]


def wrong_length(prompts, completions, **_):
    return [1.0]


def not_finite(prompts, completions, **_):
    return [math.nan] * len(completions)


@pytest.fixture
def rl_config(make_config, tmp_path):
    path = tiny.write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)

    def make(**overrides):
        block = {"rewards": [{"function": "test_rl_shared:count_words"}], "max_new_tokens": 6}
        return make_config(**{"stage": "ppo", "ppo": block, "data__train": str(path), "data__eval": str(path),
                              **overrides})

    return make


def test_prompts_render_with_the_template_and_keep_columns(rl_config, tiny_tokenizer):
    cfg = rl_config()
    records, _ = load_train_eval_records(cfg, log=lambda _m: None)
    examples, stats = load_prompt_examples(cfg, tiny_tokenizer, records)
    assert examples[0].text == examples[1].text == "<|im_start|>user\nsay hello<|im_end|>\n<|im_start|>assistant\n"
    assert examples[0].input_ids == tiny_tokenizer(examples[0].text, add_special_tokens=False)["input_ids"]
    assert examples[2].columns == {"answer": "blue"} and examples[2].where.endswith(":3")
    assert stats["examples"] == 4 and stats["truncated"] == 0


def test_overlong_prompts_follow_the_policy(rl_config, tiny_tokenizer):
    cfg = rl_config(training__max_length=16)  # 16 - 6 new tokens = 10 prompt tokens
    records = load_records(cfg.data.train)
    examples, stats = load_prompt_examples(cfg, tiny_tokenizer, records)
    full = tiny_tokenizer(examples[2].text, add_special_tokens=False)["input_ids"]
    assert stats["truncated"] == 4 and len(examples[2].input_ids) == 10
    assert tiny_tokenizer.decode(examples[2].input_ids).endswith("assistant\n")  # the end next to the answer stays
    assert len(full) == 10
    with pytest.raises(DataError, match=r"prompts.jsonl:1: prompt has \d+ tokens"):
        load_prompt_examples(rl_config(training__max_length=16, training__overlength="error"), tiny_tokenizer, records)


def test_bad_prompt_rows_are_named(rl_config, tmp_path):
    rows = [{"prompt": "ok"}, {"question": "no prompt"},
            {"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    cfg = rl_config(data__train=str(tiny.write_jsonl(tmp_path / "bad.jsonl", rows)), data__eval=None)
    with pytest.raises(DataError) as err:
        load_train_eval_records(cfg, log=lambda _m: None)
    assert "bad.jsonl:2" in str(err.value) and "bad.jsonl:3" in str(err.value)


def test_builtin_reward_functions():
    completions = ["Hello ", "the answer is 42", "no"]
    assert exact_match([], completions, answer=["hello", "42", "No"]) == [1.0, 0.0, 1.0]
    assert contains([], completions, text="42") == [0.0, 1.0, 0.0]
    assert regex([], completions, pattern=r"^\w+ ?$") == [1.0, 0.0, 1.0]


def test_function_sources_weights_and_errors(rl_config, tiny_tokenizer):
    cfg = rl_config()
    examples, _ = load_prompt_examples(cfg, tiny_tokenizer, load_records(cfg.data.train))
    rewards = load_rewards(_sources([
        {"function": "test_rl_shared:count_words", "kwargs": {"word": "blue"}, "weight": 2.0},
        {"function": "tuneforge.rl.rewards:exact_match", "weight": 0.5}]), "ppo.rewards")
    completions = ["blue blue", "hello", "blue", "cat"]
    parts = rewards.breakdown(examples, completions)
    assert parts["test_rl_shared:count_words"].tolist() == [2.0, 0.0, 1.0, 0.0]
    assert parts["tuneforge.rl.rewards:exact_match"].tolist() == [0.0, 1.0, 1.0, 0.0]
    assert rewards(examples, completions).tolist() == [4.0, 0.5, 2.5, 0.0]
    for function, match in [("no_such_module_xyz:f", "cannot import module"), ("test_rl_shared:nope", "no function"),
                            ("test_rl_shared:wrong_length", "returned 1 values for 4"),
                            ("test_rl_shared:not_finite", "finite number")]:
        with pytest.raises(ConfigError, match=rf"ppo.rewards\[0\].*{match}"):
            load_rewards(_sources([{"function": function}]), "ppo.rewards")(examples, completions)


def _sources(raw):
    from tuneforge.config.schema import RewardSourceConfig

    return [RewardSourceConfig.model_validate(r) for r in raw]


def test_sampling_is_seeded_cut_at_eos_and_logprobs_match_generate(rl_config, tiny_model_dir, tiny_tokenizer):
    cfg = rl_config()
    examples, _ = load_prompt_examples(cfg, tiny_tokenizer, load_records(cfg.data.train))
    model = load_model(str(tiny_model_dir))
    kw = {"batch_size": 3, "precision": "fp32"}
    a = sample(model, tiny_tokenizer, examples, cfg.ppo, seed=1, **kw)
    b = sample(model, tiny_tokenizer, examples, cfg.ppo, seed=1, **kw)
    assert [s.completion_ids for s in a] == [s.completion_ids for s in b]
    eos = tiny_tokenizer.eos_token_id
    for s in a:
        assert 1 <= len(s.completion_ids) <= 6 and eos not in s.completion_ids[:-1]
    # batched log-probs (left-padded prompts, right-padded completions) equal each sample's alone and the
    # scores generate used for the greedy choice
    batched = completion_logprobs(model, a, 4, "fp32", eos)
    for s, lp in zip(a, batched, strict=True):
        (alone,) = completion_logprobs(model, [s], 1, "fp32", eos)
        assert torch.allclose(lp, alone, atol=1e-5)
    greedy = sample(model, tiny_tokenizer, examples[:1], cfg.ppo, seed=None, greedy=True, **kw)[0]
    ids = torch.tensor([greedy.prompt_ids])
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=len(greedy.completion_ids), do_sample=False,
                             output_scores=True, return_dict_in_generate=True, pad_token_id=eos)
    want = torch.stack([torch.log_softmax(sc[0], -1)[t]
                        for sc, t in zip(out.scores, greedy.completion_ids, strict=True)])
    got = logprobs_of(model, to_batch([greedy], eos))[0]
    assert torch.allclose(got, want, atol=1e-5)


def test_policy_eval_kl_is_zero_against_itself_and_positive_after_a_change(rl_config, tiny_model_dir, tiny_tokenizer):
    cfg = rl_config()
    examples, _ = load_prompt_examples(cfg, tiny_tokenizer, load_records(cfg.data.train))
    model = load_model(str(tiny_model_dir))
    rewards = load_rewards(cfg.ppo.rewards, "ppo.rewards")
    kw = {"seed": 3, "batch_size": 4, "precision": "fp32"}
    same = evaluate_policy(model, tiny_tokenizer, examples, rewards, cfg.ppo, reference=contextlib.nullcontext, **kw)
    assert same["kl_mean"] == pytest.approx(0.0, abs=1e-5) and len(same["samples"]) == 4
    assert same["reward_mean"] == pytest.approx(sum(s["completion"].split().count("the") for s in same["samples"]) / 4)
    reference = load_model(str(tiny_model_dir))

    @contextlib.contextmanager
    def as_reference():  # swap in the untouched weights
        saved = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(reference.state_dict())
        try:
            yield
        finally:
            model.load_state_dict(saved)

    with torch.no_grad():
        model.lm_head.weight.mul_(3.0)  # sharper distribution: a different policy
    moved = evaluate_policy(model, tiny_tokenizer, examples, rewards, cfg.ppo, reference=as_reference, **kw)
    assert moved["kl_mean"] > 0.01


def test_a_finished_run_chains_as_model(sft_run, tmp_path, monkeypatch):
    from tuneforge.models.load import resolve_model
    from tuneforge.runs import load_run

    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path / "home"))
    run = sft_run  # the session's LoRA sft run (tests/conftest.py), read-only
    merged = resolve_model(str(run))
    assert (tmp_path / "home" / "runs") in Path(merged).parents
    stamp = (Path(merged) / "config.json").stat().st_mtime_ns
    assert resolve_model(str(run)) == merged and (Path(merged) / "config.json").stat().st_mtime_ns == stamp
    adapter_model, tok, _ = load_run(run)
    chained = load_model(str(run))
    ids = tok("hello there how are you", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(chained(ids).logits, adapter_model(ids).logits, atol=1e-4)
    assert load_tokenizer(str(run)).chat_template == tok.chat_template
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "config.yaml").write_text(
        (run / "config.yaml").read_text().replace("stage: sft", "stage: reward"))
    with pytest.raises(ModelError, match="a reward run is not a language model"):
        resolve_model(str(tmp_path / "cls"))
    assert json.loads((Path(merged) / "merge.json").read_text())["max_abs_logit_diff"] <= 1e-4


def test_system_prompt_goes_first_as_in_sft(rl_config, tiny_tokenizer):
    cfg = rl_config(data__system_prompt="be brief")
    examples, _ = load_prompt_examples(cfg, tiny_tokenizer, load_records(cfg.data.train))
    assert examples[0].text == ("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nsay hello<|im_end|>\n"
                                "<|im_start|>assistant\n")
    assert examples[1].text == examples[0].text  # the messages form too


def test_bf16_rollouts_are_the_same_with_the_frozen_weights_held(rl_config, tiny_model_dir, tiny_tokenizer,
                                                                  monkeypatch):
    """sample and completion_logprobs hold a LoRA policy's frozen weights in bf16 under bf16 autocast: the logits
    are autocast's to the bit, so the seeded draws and their log-probs are those of the un-held model."""
    from peft import LoraConfig, get_peft_model

    import tuneforge.rl.sampling as sampling

    cfg = rl_config()
    examples, _ = load_prompt_examples(cfg, tiny_tokenizer, load_records(cfg.data.train))
    torch.manual_seed(0)
    model = get_peft_model(load_model(str(tiny_model_dir)), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    eos = tiny_tokenizer.eos_token_id

    def rollout():
        s = sampling.sample(model, tiny_tokenizer, examples, cfg.ppo, seed=3, batch_size=3, precision="bf16")
        return [x.completion_ids for x in s], sampling.completion_logprobs(model, s, 4, "bf16", eos)

    held_ids, held_lp = rollout()
    monkeypatch.setattr(sampling, "bf16_weights", lambda m, p: contextlib.nullcontext(0))
    plain_ids, plain_lp = rollout()
    assert held_ids == plain_ids and len({tuple(c) for c in held_ids}) > 1
    assert all(torch.equal(a, b) for a, b in zip(held_lp, plain_lp, strict=True))
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_ppo_scoring_is_the_same_with_the_frozen_weights_held(rl_config, tiny_model_dir, tiny_tokenizer,
                                                              monkeypatch):
    """score_tokens (the rollout's policy, reference and value forwards) holds the frozen weights in bf16: the
    log-probs, reference log-probs and values are autocast's to the bit, and the reference swap still works
    inside the hold (a trained adapter: policy and reference differ)."""
    from peft import LoraConfig, get_peft_model

    import tuneforge.rl.ppo_rollout as rollout
    from tuneforge.rl import ppo_math as pm

    cfg = rl_config()
    examples, _ = load_prompt_examples(cfg, tiny_tokenizer, load_records(cfg.data.train))
    torch.manual_seed(0)
    model = get_peft_model(load_model(str(tiny_model_dir)), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    policy = rollout.PolicyWithValue(model, pm.ValueHead(model.config.hidden_size))
    with torch.no_grad():  # after the reference was taken: a trained-looking adapter and value head
        for p in policy.parameters():
            if p.requires_grad:
                p.normal_(0.0, 0.3)
    samples = sample(model, tiny_tokenizer, examples, cfg.ppo, seed=2, batch_size=3, precision="bf16")
    eos = tiny_tokenizer.eos_token_id
    held = rollout.score_tokens(policy, samples, eos, 1.0, "bf16", 3)
    monkeypatch.setattr(rollout, "bf16_weights", lambda m, p: contextlib.nullcontext(0))
    plain = rollout.score_tokens(policy, samples, eos, 1.0, "bf16", 3)
    assert all(torch.equal(a, b) for a, b in zip(held, plain, strict=True))
    mask, logp, logp_ref, values = held
    assert not torch.equal(logp[mask], logp_ref[mask]) and values[mask].abs().sum() > 0
