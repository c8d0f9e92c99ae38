"""The method x stage matrix, read from the compatibility table itself (`METHODS[m].stages`), so a new row
cannot go untested. For every allowed pair one short run through the real entry point `STAGES[stage].run`
on the tiny Llama, shared by the checks: the loss is finite and falls on a learnable task (the stage's own
first and last step on one repeated batch, and its eval before / after), trainable parameters changed and
frozen ones are bit-identical, the saved run reloads (`runs.load_run`) to the trained model's outputs, and
`eval`, `merge`, `chat` / `serve` (the engine is built, no server started) and `predict` each accept the
run or refuse it with one clear line and exit 2, as stage_info and the method say they should. Every pair
the table forbids is refused at config validation (exit 2, naming the method, the stage and what is
allowed), with nothing written.

    pytest -q tests/stages/test_matrix.py --durations=10
"""

from __future__ import annotations

import gc
import json
import math
from pathlib import Path

import pytest
import stage_kit as kit
import torch
import yaml

from tuneforge.cli import main
from tuneforge.config.schema import Config
from tuneforge.errors import ConfigError
from tuneforge.methods import METHODS
from tuneforge.stage_info import STAGE_INFO, stage_info

PAIRS = [(m, s) for m in METHODS for s in STAGE_INFO if s in METHODS[m].stages]
FORBIDDEN = [(m, s) for m in METHODS for s in STAGE_INFO if s not in METHODS[m].stages]


def _ids(pairs):
    return [f"{m}-{s}" for m, s in pairs]


@pytest.fixture(scope="module", autouse=True)
def lean_process():
    """Tiny matmuls on a shared 2-core CPU: one thread is several times faster than two spinning ones. The
    objects of every library imported so far are frozen out of the garbage collector: `eval` and the loaders
    collect after each model, and a full collection of this process took ~1 s each time."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return kit.write_files(tmp_path_factory.mktemp("matrix-data"))


class Trained:
    """One pair's run (shared by every check of the pair)."""

    def __init__(self, method: str, stage: str, cfg: Config, run: kit.Captured) -> None:
        self.method, self.stage, self.cfg, self.info = method, stage, cfg, stage_info(stage)
        self.out, self.start, self.model, self.probed = run.out, run.start, run.model, run.probed


@pytest.fixture(scope="module")
def rl_reward(files, tiny_model_dir, tmp_path_factory) -> tuple[list[str], list[int]]:
    """The first words ppo / grpo are rewarded for (about a third of the base model's first tokens)."""
    raw = kit.config("lora", "grpo", files, tiny_model_dir, tmp_path_factory.mktemp("rl") / "run")
    return kit.rl_words(tiny_model_dir, Config.model_validate(raw))


@pytest.fixture(scope="module", params=PAIRS, ids=_ids(PAIRS))
def trained(request, files, tiny_model_dir, tmp_path_factory) -> Trained:
    method, stage = request.param
    root = tmp_path_factory.mktemp(f"{method}-{stage}")
    probe, words = None, ()
    if stage_info(stage).block in ("ppo", "grpo"):  # the exact chance of a rewarded first token, before / after
        words, ids = request.getfixturevalue("rl_reward")
        prompts = kit.prompt_ids(Config.model_validate(kit.config(method, stage, files, tiny_model_dir, root / "x")))

        def probe(model):
            return float(kit.first_token_probs(model, prompts)[ids].sum())

    cfg = Config.model_validate(kit.config(method, stage, files, tiny_model_dir, root / "run", words))
    return Trained(method, stage, cfg, kit.run_captured(cfg, probe))


def test_the_table_is_walked():
    print(f"\nmethod x stage table: {len(PAIRS)} allowed pairs trained, {len(FORBIDDEN)} forbidden pairs refused")
    assert len(PAIRS) + len(FORBIDDEN) == len(METHODS) * len(STAGE_INFO)
    for method in METHODS:  # every method trains with at least the causal-LM stages
        assert {"sft", "pretrain"} <= {s for m, s in PAIRS if m == method}


def test_loss_is_finite_and_falls(trained):
    history = [json.loads(line) for line in (trained.out / "train_log.jsonl").read_text().splitlines()]
    metrics = json.loads((trained.out / "metrics.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == trained.cfg.training.max_steps and all(math.isfinite(x) for x in losses), losses
    before, after = metrics["eval_before"] or {}, metrics["eval_after"]
    if "loss" in trained.info.metrics:  # one repeated batch: each step descends on the same examples
        assert losses[-1] < losses[0], losses
        assert after["loss"] < before["loss"], (before, after)
    else:  # ppo / grpo: the loss is a surrogate; the chance of a rewarded completion must rise
        start, end = trained.probed
        assert end > start, (start, end)
        assert after["reward_mean"] >= 0 and before["reward_mean"] >= 0


def test_trainable_changed_and_frozen_bit_identical(trained):
    now = dict(trained.model.named_parameters())
    frozen = [n for n in trained.start if n in now and not now[n].requires_grad]
    trainable = [n for n in trained.start if n in now and now[n].requires_grad]
    assert trainable, "nothing trained"
    changed = [n for n in frozen if not torch.equal(now[n], trained.start[n])]
    assert not changed, f"frozen parameters changed: {changed[:5]}"
    unchanged = [n for n in trainable if torch.equal(now[n], trained.start[n])]
    assert not unchanged, f"trainable parameters did not change: {unchanged[:5]}"
    expected = {n for n in now if kit.should_train(trained.method, trained.info, n)}
    assert {n for n, p in now.items() if p.requires_grad} == expected


def test_saved_run_reloads_to_the_same_outputs(trained):
    from tuneforge.runs import load_run

    reloaded, tokenizer, cfg = load_run(trained.out)
    assert cfg.stage == trained.stage and cfg.method.name == trained.method
    model = trained.model.eval()
    for text in kit.PROBES:
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.no_grad():
            want = kit.outputs(model, ids)
            got = kit.outputs(reloaded, ids)
        assert want.shape == got.shape and torch.allclose(want, got, atol=1e-5, rtol=0), (want - got).abs().max()


def _cli(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def _refused(code: int, err: str, *words: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, (code, err)
    assert lines[0].startswith("error: ") and "unexpected" not in lines[0], lines
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_eval_accepts_or_refuses(trained, files, tmp_path, capsys):
    data = files[kit.eval_file(trained.info)]
    out = tmp_path / "ev"
    code, err = _cli(capsys, "eval", trained.out, "--data", data, "--output", out, "--max-samples", "2",
                     "--max-new-tokens", "2")
    if trained.info.model_kind == "scorer":  # a reward run scores texts: neither eval nor the bias probes apply
        _refused(code, err, str(trained.out), trained.stage)
        code, err = _cli(capsys, "data", "bias", trained.out, "--output", tmp_path / "bias")
        _refused(code, err, str(trained.out), trained.stage)
        assert not out.exists() and not (tmp_path / "bias").exists()
        return
    assert code == 0, err
    summary = json.loads((out / "eval.json").read_text())
    assert list(summary["models"]) == ["base", "tuned"] and summary["rows"] == 2
    if trained.info.chat_template:  # chat items, rendered with the run's template, not raw text
        rows = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
        assert rows and all(r["prompt"].endswith("<|im_start|>assistant\n") for r in rows), rows


def test_merge_accepts_or_refuses(trained, tmp_path, capsys):
    code, err = _cli(capsys, "merge", trained.out, "--output", tmp_path / "merged")
    if not METHODS[trained.method].mergeable:
        _refused(code, err, trained.method)
        assert not (tmp_path / "merged").exists()
        return
    assert code == 0, err
    report = json.loads((tmp_path / "merged" / "merge.json").read_text())
    assert report["max_abs_logit_diff"] <= report["atol"]


@pytest.mark.parametrize("command", ["chat", "serve"])
def test_chat_and_serve_accept_or_refuse(command, trained, monkeypatch, capsys):
    from tuneforge.inference import chat, server
    from tuneforge.inference.engine import Params

    engines = []
    monkeypatch.setattr(chat, "run_chat", lambda engine, params, **_: engines.append(engine) or 0)
    monkeypatch.setattr(server, "run_server", lambda engine, *a: engines.append(engine))
    code, err = _cli(capsys, command, trained.out, "--max-tokens", "4")
    if not trained.info.generates:
        _refused(code, err, str(trained.out), trained.stage, "does not generate text")
        assert not engines
        return
    assert code == 0 and len(engines) == 1, err
    engine = engines[0]
    result = engine.generate(engine.chat_prompt_ids([{"role": "user", "content": kit.PROBES[0]}]), Params(3))
    assert result.completion_tokens >= 1


def test_predict_accepts_or_refuses(trained, files, tmp_path, capsys):
    out = tmp_path / "pred.jsonl"
    code, err = _cli(capsys, "predict", trained.out, "--input", files["classify_eval"], "--output", out)
    if trained.info.model_kind != "classifier":
        _refused(code, err, str(trained.out), trained.stage, "predict")
        assert not out.exists()
        return
    assert code == 0, err
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == len(files["classify_eval"].read_text().splitlines())
    assert all(r["predicted"] in ("neg", "pos") for r in rows)


@pytest.mark.parametrize("method, stage", FORBIDDEN, ids=_ids(FORBIDDEN))
def test_forbidden_pair_is_refused_at_validation(method, stage, files, tiny_model_dir, tmp_path, capsys):
    from tuneforge.config.checks import check_config

    raw = kit.config(method, stage, files, tiny_model_dir, tmp_path / "run")
    allowed = sorted(METHODS[method].stages)
    with pytest.raises(ConfigError) as exc:
        check_config(Config.model_validate(raw))
    for word in (repr(method), repr(stage), *allowed):
        assert word in str(exc.value)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    for command in ("validate", "train"):
        code, err = _cli(capsys, command, path)
        _refused(code, err, repr(method), repr(stage), ", ".join(allowed))
    assert not (tmp_path / "run").exists()  # refused before anything was written
