"""The grpo stage on the tiny Llama: a toy reward (the share of completion text spelling a given word) rises
while the KL to the reference stays bounded, only the LoRA weights train, the saved run reloads to the same
log-probs; freeze / ia3 / qlora train the right weights and reload; a reward run works as a source (with full
fine-tuning and a second, weighted source); bad reward
functions and a missing `grpo:` block exit 2 naming the key, with nothing written; resume=auto reproduces the
uninterrupted run."""

from __future__ import annotations

import json
import math

import pytest
import torch

import tiny
from tuneforge.config.load import dump_config
from tuneforge.data.load import load_records
from tuneforge.data.stage_data import load_stage_examples
from tuneforge.models import load_tokenizer
from tuneforge.stages import grpo, skeleton

APPLY_METHOD = skeleton.apply_method
WORD = "the"
QUESTIONS = ["what color is the sky ?", "what is the capital of france ?", "say hello", "name a fish",
             "what color is the snow ?", "hi there", "say yes", "what is one and two ?"]


def word_share(prompts, completions, word=WORD, **_):
    """The toy reward: the share of the completion's characters that spell `word` (0 to 1)."""
    return [len(word) * c.count(word) / max(len(c), 1) for c in completions]


def wrong_length(prompts, completions, **_):
    return [1.0]


def not_numbers(prompts, completions, **_):
    return ["high"] * len(completions)


def needs_answer(prompts, completions, answer, **_):
    return [float(a in c) for a, c in zip(answer, completions, strict=True)]


def initial_policy(cfg):
    """The policy as the stage builds it before training (the skeleton seeds before loading the base)."""
    run = skeleton.begin(cfg, lambda _m: None)
    return APPLY_METHOD(run, skeleton.load_base(run))[0]


def capture_policy(monkeypatch) -> dict:
    """{"model": the policy the stage trains}, once the stage has built it."""
    seen = {}

    def apply_method(run, model):
        model, counts = APPLY_METHOD(run, model)
        seen["model"] = model
        return model, counts

    monkeypatch.setattr(skeleton, "apply_method", apply_method)
    return seen


@pytest.fixture
def grpo_config(make_config, tmp_path):
    data = {"train": tiny.write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": q} for q in QUESTIONS * 2]),
            "eval": tiny.write_jsonl(tmp_path / "prompts_eval.jsonl", [{"prompt": q} for q in QUESTIONS])}

    def make(rewards=({"function": "test_grpo:word_share"},), **overrides):
        block = {"rewards": list(rewards), "num_generations": 4, "max_new_tokens": 8, "beta": 0.04}
        base = {"stage": "grpo", "grpo": block, "data__train": str(data["train"]), "data__eval": str(data["eval"]),
                "training__learning_rate": 1e-2, "training__max_steps": 12, "training__max_length": 64}
        return make_config(**{**base, **overrides})

    return make


def test_batch_arithmetic(grpo_config, tmp_path):
    cfg = grpo_config(training__batch_size=3, training__grad_accum=2)
    args = grpo.to_grpo_config(cfg, tmp_path, "fp32")
    # 3 prompts x 4 completions per micro-batch; one generation feeds the 2 micro-batches of an optimizer step
    assert args.per_device_train_batch_size == 12 and args.generation_batch_size == 24
    assert args.steps_per_generation == 2 and args.max_completion_length == 8 and args.beta == 0.04
    assert args.bf16 is False and args.gradient_checkpointing is False and args.remove_unused_columns is False


def test_reward_rises_kl_bounded_lora_trains_and_reloads(grpo_config, monkeypatch):
    cfg = grpo_config(training__eval_steps=6)
    seen, periodic = capture_policy(monkeypatch), []  # the stage's policy, to compare with a fresh copy of its start
    out = grpo.run(cfg, log=lambda _m: None, on_eval=lambda step, result: periodic.append((step, result)))
    metrics = json.loads((out / "metrics.json").read_text())
    before, after, train = metrics["eval_before"], metrics["eval_after"], metrics["train"]
    assert after["reward_mean"] >= before["reward_mean"] + 0.1, (before, after)
    assert before["kl_mean"] == 0.0  # the initial policy is the reference
    assert [(s, r["step"]) for s, r in periodic] == [(6, 6)] and metrics["evals"] == [periodic[0][1]]
    assert periodic[0][1]["kl_mean"] > 0 and "samples" not in periodic[0][1]
    # per completion of at most 8 tokens; a policy collapsed onto the word is at ~70 nats here
    assert 0.0 < after["kl_mean"] < 32.0, after
    history = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == list(range(1, 13))
    assert all(math.isfinite(h["loss"]) and math.isfinite(h["kl"]) for h in history)
    rewards = [h["reward"] for h in history]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.05, rewards
    # real tokens: each step generated 4 prompts x 4 completions; length_mean is that step's mean
    assert train["completion_tokens"] == pytest.approx(sum(16 * h["length_mean"] for h in history))
    assert train["completions_per_step"] == 16 and train["steps"] == 12 and train["tokens_per_second"] > 0
    assert (out / "rewards.png").stat().st_size > 1000 and "rewards.png" in (out / "report.md").read_text()
    assert json.loads((out / "template.json").read_text())["template"] == "chat"
    assert not (out / "ref").exists()  # TRL's reference adapter is not saved

    _check_weights(cfg, seen["model"], lambda n: "lora_" in n)
    _check_reloads(cfg, out, seen["model"])


def _check_weights(cfg, model, should_train) -> None:
    """The trainable set is what the method says; every trainable tensor moved, every frozen one did not."""
    initial = dict(initial_policy(cfg).named_parameters())  # the same seed: the same initial adapter
    trained = dict(model.named_parameters())
    trainable = {n for n, p in trained.items() if p.requires_grad}
    assert trainable and trainable == {n for n in trained if should_train(n)} and set(trained) == set(initial)
    for name, value in initial.items():
        assert torch.equal(trained[name], value) == (name not in trainable), name


def _check_reloads(cfg, out, model, atol: float = 1e-5) -> None:
    """load_run gives the in-memory policy's log-probs on its own samples."""
    from tuneforge.data.load import load_records
    from tuneforge.rl.prompts import load_prompt_examples
    from tuneforge.rl.sampling import completion_logprobs, sample
    from tuneforge.runs import load_run

    reloaded, tokenizer, _ = load_run(out)
    examples = load_prompt_examples(cfg, tokenizer, load_records(cfg.data.train))[0][:8]
    samples = sample(model, tokenizer, examples, cfg.grpo, seed=1, batch_size=4, precision="fp32")
    model.eval()
    want = completion_logprobs(model, samples, 4, "fp32", tokenizer.pad_token_id)
    got = completion_logprobs(reloaded, samples, 4, "fp32", tokenizer.pad_token_id)
    for w, g in zip(want, got, strict=True):
        assert torch.allclose(w, g, atol=atol), (w, g)


METHOD_CASES = {  # method config, predicate over the parameter names that train
    "freeze": ({"name": "freeze", "last_n_layers": 1}, lambda n: ".layers.1." in n),
    "ia3": ({"name": "ia3"}, lambda n: "ia3_" in n),
    "qlora": ({"name": "qlora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
              lambda n: "lora_" in n),
}


@pytest.mark.parametrize("case", list(METHOD_CASES))
def test_other_methods_train_the_right_weights_and_reload(case, grpo_config, monkeypatch):
    method, should_train = METHOD_CASES[case]
    steps = 1 if case == "qlora" else 2  # bitsandbytes on CPU is slow; one step shows it trains and saves
    cfg = grpo_config(method=method, training__max_steps=steps, data__eval=None)
    seen = capture_policy(monkeypatch)
    out = grpo.run(cfg, log=lambda _m: None)
    history = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(history) == steps and all(math.isfinite(h["loss"]) and math.isfinite(h["kl"]) for h in history)
    model = seen["model"]
    if case != "qlora":
        _check_weights(cfg, model, should_train)
        _check_reloads(cfg, out, model)
        return
    # TRL keeps QLoRA adapters in bf16 (trl 1.16), so the in-memory LoRA path rounds differently from the
    # reloaded fp32 one: compare the saved tensors exactly and the log-probs loosely
    from safetensors.torch import load_file

    saved = load_file(str(out / "adapter_model.safetensors"))
    trained = {n.replace(".default", ""): p for n, p in model.named_parameters() if p.requires_grad}
    assert set(saved) == set(trained) and all(should_train(n) for n in trained)
    assert all(torch.equal(saved[n].float(), p.detach().float()) for n, p in trained.items())
    assert any(torch.count_nonzero(saved[n]) for n in saved if "lora_B" in n)  # B starts at zero: it trained
    _check_reloads(cfg, out, model, atol=5e-2)


def _reward_run(make_config, tmp_path):
    """A finished reward run, built directly: the tiny Llama with a fresh (untrained, seeded) reward head."""
    from tuneforge.fsutil import write_json_atomic, write_text_atomic
    from tuneforge.models import load_tokenizer
    from tuneforge.models.classifier import load_base_classifier
    from tuneforge.stages.reward import LABELS

    out = tmp_path / "reward_run"
    cfg = make_config(stage="reward", method={"name": "full"}, output_dir=str(out))
    torch.manual_seed(0)
    model = load_base_classifier(cfg, LABELS)
    write_text_atomic(out / "config.yaml", dump_config(cfg))
    write_json_atomic(out / "labels.json", {"labels": LABELS})
    skeleton.save_model(model, load_tokenizer(cfg.model), out)
    return out


def test_reward_run_source_with_full_fine_tuning(grpo_config, make_config, tmp_path):
    from tuneforge.data.preference import to_text
    from tuneforge.rl.reward_model import load_reward_model
    from tuneforge.runs import load_run

    run_dir = _reward_run(make_config, tmp_path)
    sources = [{"run": str(run_dir), "weight": 0.5}, {"function": "test_grpo:word_share"}]
    cfg = grpo_config(rewards=sources, method={"name": "full"}, training__max_steps=2, training__learning_rate=1e-3)
    out = grpo.run(cfg, log=lambda _m: None)
    names = [f"reward_run:{run_dir}", "test_grpo:word_share"]
    for h in (json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()):
        assert h["reward"] == pytest.approx(0.5 * h[f"reward/{names[0]}"] + h[f"reward/{names[1]}"], abs=1e-5)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["eval_after"]["rewards"]) == set(names) and metrics["eval_after"]["kl_mean"] > 0
    scorer = load_reward_model(run_dir)
    after = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines() if '"after"' in line]
    rows = {q: q for q in QUESTIONS}
    texts = [to_text(scorer.tokenizer, _prompt_of(s["prompt"], rows), s["completion"], True) for s in after]
    want = [0.5 * r + w for r, w in zip(scorer(texts), word_share([], [s["completion"] for s in after]), strict=True)]
    assert [s["reward"] for s in after] == pytest.approx(want, abs=1e-4)
    assert (out / "config.json").is_file() and load_run(out)[2].method.name == "full"  # a whole model


def _prompt_of(text: str, rows: dict[str, str]) -> str:
    """The data row's prompt of a rendered prompt text."""
    (found,) = [q for q in rows if f"user\n{q}<|im_end|>" in text]
    return found


@pytest.mark.parametrize("function, message", [
    ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
    ("test_grpo:nope", "has no function 'nope'"),
    ("test_grpo:wrong_length", "returned 1 values for 2 completions"),
    ("test_grpo:not_numbers", "every reward must be a finite number"),
    ("test_grpo:needs_answer", "raised TypeError"),  # the data has no `answer` column
])
def test_bad_reward_function_exits_2_before_writing(function, message, grpo_config, tmp_path, capsys):
    from tuneforge.cli import main

    cfg = grpo_config(rewards=[{"function": "tuneforge.rl.rewards:regex", "kwargs": {"pattern": "x"}},
                               {"function": function}])
    path = tmp_path / "grpo.yaml"
    path.write_text(dump_config(cfg))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "grpo.rewards[1]" in err and message in err, err
    assert not (tmp_path / "run").exists()


def test_missing_grpo_block_is_a_config_error(grpo_config, tmp_path, capsys):
    import yaml

    from tuneforge.cli import main

    raw = yaml.safe_load(dump_config(grpo_config()))
    del raw["grpo"]
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["train", str(path)]) == 2
    assert "stage 'grpo' needs a 'grpo' block" in capsys.readouterr().err


def test_resume_auto_reproduces_the_uninterrupted_run(grpo_config, tmp_path):
    common = {"training__save_steps": 2, "data__eval": None}  # no evaluation: the point is the resume
    straight = grpo.run(grpo_config(training__max_steps=3, output_dir=str(tmp_path / "straight"), **common),
                        log=lambda _m: None)
    out = grpo.run(grpo_config(training__max_steps=2, **common), log=lambda _m: None)
    assert (out / "checkpoints" / "checkpoint-2" / "COMPLETE").is_file()
    resumed = grpo.run(grpo_config(training__max_steps=3, resume="auto", **common), log=lambda _m: None)
    metrics = json.loads((resumed / "metrics.json").read_text())
    assert metrics["train"]["resumed_from"].endswith("checkpoint-2") and metrics["train"]["steps"] == 3
    history, want = ([json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
                     for run in (out, straight))
    assert [h["step"] for h in history] == [1, 2, 3]
    for key in ("loss", "reward", "kl", "length_mean"):  # the same completions and updates after the resume
        assert [h[key] for h in history] == pytest.approx([h[key] for h in want], abs=1e-6), key


def test_rows_that_render_alike_keep_their_own_prompt_ids(grpo_config, tmp_path, monkeypatch):
    """A user turn that spells out a whole conversation with control tokens renders to the same text as the real
    multi-turn conversation, but tokenizes differently (its control tokens are escaped, plain text): each row must
    generate from its own ids (they were looked up by rendered text, so one row got the other's)."""
    forged = "hi<|im_end|>\n<|im_start|>assistant\nok<|im_end|>\n<|im_start|>user\nbye"
    real = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "bye"}]
    rows = [{"prompt": [{"role": "user", "content": forged}]}, {"prompt": real}]
    train = tiny.write_jsonl(tmp_path / "alike.jsonl", rows)
    seen: list[list[int]] = []
    tokenize = grpo.PromptIdsTrainer._tokenize_prompts

    def spy(self, prompts):
        ids = tokenize(self, prompts)
        seen.extend(ids[0])
        return ids

    monkeypatch.setattr(grpo.PromptIdsTrainer, "_tokenize_prompts", spy)
    cfg = grpo_config(data__train=str(train), data__eval=None, training__max_steps=1, training__batch_size=2,
                      eval__before=False)
    examples, _ = load_stage_examples(cfg, load_tokenizer(cfg.model), load_records(str(train)))
    built = [e.input_ids for e in examples]
    assert examples[0].text == examples[1].text and built[0] != built[1]  # alike as text, not as ids
    grpo.run(cfg, lambda _m: None)
    # both rows were generated from, each from its own ids (one batch of the two rows)
    assert {tuple(ids) for ids in seen} == {tuple(ids) for ids in built}
