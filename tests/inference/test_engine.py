"""The engine answers as the run's own evaluation did, streams pieces that join to the decoded ids, stops
at EOS, honours cancellation and its bounds, and loads full, prompt-tuning and merged runs alike."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from tuneforge.data.formats import detect_format, to_messages
from tuneforge.data.load import load_records
from tuneforge.inference.engine import Params, RequestError, load_engine
from tuneforge.runs import run_config
from tuneforge.stages import STAGES


def _eval_prompts(run) -> list[tuple[list[dict], dict]]:
    """(user-side messages without the system prompt, the generations.jsonl row) for each generated prompt."""
    cfg = run_config(run)
    rows = [json.loads(x) for x in (run / "generations.jsonl").read_text().splitlines()]
    out = []
    for record, row in zip(load_records(cfg.data.eval), rows, strict=False):
        messages = to_messages(record, detect_format(record, "sft"))
        out.append((messages[:-1], row))
    assert len(out) == len(rows) > 0
    return out


def test_engine_reproduces_the_runs_own_generations(engine, served_run):
    for messages, row in _eval_prompts(served_run):
        assert engine.chat_prompt(messages) == row["prompt"]  # saved template + saved system prompt
        result = engine.generate(engine.chat_prompt_ids(messages), Params(12))
        assert result.text == row["tuned"]


def _greedy_ids(engine, ids: list[int], n: int) -> list[int]:
    """New token ids from plain transformers generate, no streamer."""
    with torch.no_grad():
        out = engine.model.generate(input_ids=torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                                    eos_token_id=engine.eos_ids, pad_token_id=engine.tokenizer.pad_token_id)
    return out[0, len(ids):].tolist()


def test_streamed_pieces_join_to_the_decoded_ids(engine):
    ids = engine.chat_prompt_ids([{"role": "user", "content": "what is the capital of spain ?"}])
    pieces: list[str] = []
    result = engine.generate(ids, Params(20), on_text=pieces.append)
    new = _greedy_ids(engine, ids, 20)
    assert len(pieces) > 1 and "".join(pieces) == result.text
    assert result.text == engine.tokenizer.decode(new, skip_special_tokens=True)
    assert (result.prompt_tokens, result.completion_tokens) == (len(ids), len(new))
    assert result.finish_reason == ("stop" if new[-1] in engine.eos_ids else "length")


def test_generation_stops_at_eos(engine, monkeypatch):
    ids = engine.chat_prompt_ids([{"role": "user", "content": "hi"}])
    new = _greedy_ids(engine, ids, 12)
    assert len(new) == 12 and engine.generate(ids, Params(12)).finish_reason == "length"
    k = new.index(new[3])  # make the 4th generated token (first seen at k) the end-of-sequence token
    monkeypatch.setattr(engine, "eos_ids", [new[3]])
    stopped = engine.generate(ids, Params(12))
    assert (stopped.finish_reason, stopped.completion_tokens) == ("stop", k + 1)
    assert stopped.text == engine.tokenizer.decode(new[: k + 1], skip_special_tokens=True)


def test_cancel_and_sampling(engine):
    ids = engine.chat_prompt_ids([{"role": "user", "content": "hi"}])
    cancel = threading.Event()
    cancel.set()
    result = engine.generate(ids, Params(20), cancel=cancel)
    assert (result.finish_reason, result.completion_tokens) == ("cancelled", 1)
    sampled = [engine.generate(ids, Params(16, temperature=1.0, seed=s)).text for s in (0, 0, 1, 2)]
    assert sampled[0] == sampled[1]  # a seed reproduces a sample
    assert len(set(sampled)) > 1  # and sampling is on


@pytest.mark.parametrize("messages, match", [
    ([], "non-empty"),
    ([{"role": "robot", "content": "hi"}], r"messages\[0\].role"),
    ([{"role": "user", "content": "hi"}, {"role": "system", "content": "x"}], "may only come first"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}], "last message"),
    ([{"role": "user", "content": None}], "must be a string"),
])
def test_bad_messages_are_refused(engine, messages, match):
    with pytest.raises(RequestError, match=match):
        engine.chat_prompt_ids(messages)


def test_bounds(engine):
    ids = engine.chat_prompt_ids([{"role": "user", "content": "hi"}])
    with pytest.raises(RequestError, match="max_tokens must be between 1 and 24"):
        engine.generate(ids, Params(25))
    with pytest.raises(RequestError, match="at most 64") as exc:
        engine.generate(engine.chat_prompt_ids([{"role": "user", "content": "the " * 80}]), Params(4))
    assert exc.value.code == "context_length_exceeded"


@pytest.mark.parametrize("method", [{"name": "full"}, {"name": "prompt", "num_virtual_tokens": 4}],
                         ids=["full", "prompt"])
def test_other_run_kinds(method, make_config):
    run = STAGES["sft"](make_config(method=method, training__max_steps=3, training__learning_rate=1e-3,
                                    eval__before=False, data__system_prompt="say one word ."))
    engine = load_engine(run)
    for messages, row in _eval_prompts(run):
        assert engine.chat_prompt(messages) == row["prompt"]
        assert engine.generate(engine.chat_prompt_ids(messages), Params(12)).text == row["tuned"]


def test_merged_directory_keeps_the_runs_template_and_system_prompt(served_run, engine, tmp_path):
    from tuneforge.export.merge import merge

    merged = load_engine(merge(served_run, tmp_path / "merged"))
    assert merged.system_prompt == engine.system_prompt and merged.template == engine.template
    for messages, row in _eval_prompts(served_run):
        assert merged.chat_prompt(messages) == row["prompt"]
        assert merged.generate(merged.chat_prompt_ids(messages), Params(12)).text == row["tuned"]


def test_a_classify_run_is_refused_before_loading(make_config, tmp_path):
    from tuneforge.config.load import dump_config
    from tuneforge.errors import ModelError

    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "config.yaml").write_text(dump_config(make_config(stage="classify")))
    with pytest.raises(ModelError, match="classify run predicts labels"):
        load_engine(tmp_path / "cls")
