"""What the stage tests share: `run_captured` (a run through the real `STAGES[stage].run` that keeps the
model the stage trained and its parameters right after the method was applied), and for the method x stage
matrix (test_matrix.py) one tiny learnable data file per record kind, each as many rows as one batch, so
every step of a short run descends on the same examples. The preference stage tests (test_dpo.py,
test_preference.py) share their data, config factory and bad-row check (preference_files, preference_config,
assert_bad_row_refused)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import tiny

BATCH = 8
STEPS = 3
LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}
METHOD_CONFIGS = {
    "full": {}, "freeze": {"last_n_layers": 1}, "lora": LORA, "qlora": LORA, "ia3": {},
    "adapter": {"size": 16}, "prefix": {"num_virtual_tokens": 4}, "prompt": {"num_virtual_tokens": 4},
}
# High enough that three steps on one batch visibly lower its loss, low enough not to overshoot.
LEARNING_RATES = {"full": 3e-3, "freeze": 1e-2, "lora": 3e-2, "qlora": 3e-2, "ia3": 3e-2, "adapter": 1e-2,
                  "prefix": 1e-1, "prompt": 1e-1}
# Which parameters each method trains (names as the stage's model has them, peft wrappers included).
TRAINS = {
    "full": lambda n: True, "freeze": lambda n: ".layers.1." in n, "lora": lambda n: "lora_" in n,
    "qlora": lambda n: "lora_" in n, "ia3": lambda n: "ia3_l" in n, "adapter": lambda n: ".bottleneck_adapter." in n,
    "prefix": lambda n: "prompt_encoder" in n, "prompt": lambda n: "prompt_encoder" in n,
}


def should_train(method: str, info, name: str) -> bool:
    """What `method` trains, plus what the stage adds: a classifier / scorer head (peft keeps its trainable
    copy in modules_to_save), PPO's value head."""
    head = info.has_labels and (name.startswith(("score.", "classifier.")) or "modules_to_save" in name)
    return TRAINS[method](name) or head or name.startswith("value_head.")


DOCS = ["the sky is blue and the grass is green .", "the capital of france is paris .",
        "one two three four five six seven eight nine ten .", "the sun is yellow and the snow is white ."]
QUESTIONS = ["what color is the sky ?", "what is the capital of france ?", "say hello", "name a fish",
             "what color is the snow ?", "hi there", "say yes", "what is one and two ?"]
PROBES = ["what color is the sky ?", "the capital of france is"]
REWARD = "stage_kit:starts_with"


@dataclass
class Captured:
    out: Path
    start: dict[str, torch.Tensor]  # every parameter right after the method was applied
    model: torch.nn.Module  # the model the stage finished with (saved)
    probed: tuple = ()  # probe(model) right after the method was applied, and at the finish

    def trainable(self) -> set[str]:
        return {n for n, p in self.model.named_parameters() if p.requires_grad}


def run_captured(cfg, probe=None, log=lambda _msg: None) -> Captured:
    """Run `STAGES[cfg.stage].run(cfg)`, keeping what the skeleton's apply_method returned (its parameters
    cloned, and `probe(model)` then) and the model handed to its finish (and `probe(model)` there)."""
    from tuneforge.stages import STAGES, skeleton

    seen: dict = {"probed": []}
    apply_method, finish = skeleton.apply_method, skeleton.finish

    def spy_apply(run, model):
        model, counts = apply_method(run, model)
        seen["start"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        seen["probed"] += [probe(model)] if probe else []
        return model, counts

    def spy_finish(run, model, outcome):
        seen["model"] = model
        seen["probed"] += [probe(model)] if probe else []
        return finish(run, model, outcome)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(skeleton, "apply_method", spy_apply)
        mp.setattr(skeleton, "finish", spy_finish)
        out = STAGES[cfg.stage].run(cfg, log=log)
    assert "start" in seen and "model" in seen, f"{cfg.stage} did not run through the skeleton's apply_method / finish"
    return Captured(Path(out), seen["start"], seen["model"], tuple(seen["probed"]))


def starts_with(prompts, completions, words: list[str], **_) -> list[float]:
    """The RL stages' toy reward: 1 when the completion starts with one of `words` (`rl_words` picks the tiny
    random model's likeliest first words, about a third of its samples, so a group of samples holds both
    outcomes and a few steps can raise it)."""
    return [float(c.startswith(tuple(words))) for c in completions]


def prompt_ids(cfg) -> list[list[int]]:
    """The token ids the policy of an RL run continues (its prompts rendered as the stage renders them)."""
    from tuneforge.data.load import load_records
    from tuneforge.models import load_tokenizer
    from tuneforge.rl.prompts import load_prompt_examples

    examples, _ = load_prompt_examples(cfg, load_tokenizer(cfg.model), load_records(cfg.data.train))
    return [e.input_ids for e in examples]


@torch.no_grad()
def first_token_probs(model, prompts: list[list[int]]) -> torch.Tensor:
    """[vocab] mean next-token distribution over the prompts: the chance a sampled completion starts so."""
    was_training = model.training
    model.eval()
    probs = [torch.softmax(outputs(model, torch.tensor([ids]))[0, -1], -1) for ids in prompts]
    model.train(was_training)
    return torch.stack(probs).mean(0)


def rl_words(model_dir: Path, cfg, share: float = 0.3) -> tuple[list[str], list[int]]:
    """The word tokens the base model most often starts a completion with (on the RL prompts), until they
    cover `share` of its first tokens: (words, their token ids). No word is the start of another token, so
    the reward (on decoded text) pays exactly for these first tokens."""
    from tuneforge.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    vocab = list(tokenizer.get_vocab())
    probs = first_token_probs(load_model(str(model_dir)), prompt_ids(cfg))
    words, ids = [], []
    for token_id in probs.argsort(descending=True).tolist():
        word = tokenizer.convert_ids_to_tokens(token_id)
        if word.isalnum() and not any(v != word and v.startswith(word) for v in vocab):
            words.append(word)
            ids.append(token_id)
        if float(probs[ids].sum()) >= share:
            return words, ids
    raise AssertionError("the vocabulary has too few words")


def preference_pairs(n: int, seed: int = 0) -> list[dict]:
    """Separable preferences of equal length: the chosen response has a cue word where the rejected one has
    a filler word."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.sample(tiny.FILLER, 4)
        chosen = list(words)
        chosen[rng.randrange(4)] = "thanks"
        rows.append({"prompt": " ".join(rng.sample(tiny.FILLER, 2)), "chosen": " ".join(chosen),
                     "rejected": " ".join(words)})
    return rows


def preference_files(root: Path, n_train: int, n_eval: int) -> dict[str, Path]:
    """Separable pairs (train, held out) and the same pairs as kto rows (chosen -> true, rejected -> false)."""
    from tuneforge.data.kto_rows import kto_rows_of_pairs

    pairs, held_out = preference_pairs(n_train), preference_pairs(n_eval, seed=1)
    return {"pairs": tiny.write_jsonl(root / "pairs.jsonl", pairs),
            "pairs_eval": tiny.write_jsonl(root / "pairs_eval.jsonl", held_out),
            "kto": tiny.write_jsonl(root / "kto.jsonl", kto_rows_of_pairs(pairs)),
            "kto_eval": tiny.write_jsonl(root / "kto_eval.jsonl", kto_rows_of_pairs(held_out))}


def preference_config(make_config, files: dict[str, Path], stage: str, **overrides):
    """A preference stage's config (conftest's make_config) on `files` (kto reads the rows, the others the
    pairs): batches of 8 at learning rate 1e-2, no metric log; `overrides` on top."""
    train, evals = ("kto", "kto_eval") if stage == "kto" else ("pairs", "pairs_eval")
    base = {"stage": stage, "data__train": str(files[train]), "data__eval": str(files[evals]),
            "training__batch_size": 8, "training__learning_rate": 1e-2, "training__report_to": []}
    return make_config(**{**base, **overrides})


def assert_bad_row_refused(cfg, path: Path, message: str, capsys) -> None:
    """`tuneforge train` on `cfg`, whose train file `path` is bad at line 2: exit 2 naming path:2 and
    `message`, and no output_dir written."""
    from tuneforge.cli import main
    from tuneforge.config.load import dump_config

    cfg_path = path.parent / "cfg.yaml"
    cfg_path.write_text(dump_config(cfg))
    assert main(["train", str(cfg_path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2: " in err and message in err, err
    assert not Path(cfg.output_dir).exists()


def write_files(root: Path) -> dict[str, Path]:
    from tuneforge.data.kto_rows import kto_rows_of_pairs

    w = tiny.write_jsonl
    sft = tiny.toy_sft_rows(BATCH)
    return {
        "sft": w(root / "sft.jsonl", sft),
        "pretrain": w(root / "text.jsonl", [{"text": d} for d in DOCS * (BATCH // len(DOCS))]),
        "classify": w(root / "cls.jsonl", tiny.toy_cls_rows(BATCH)),
        "classify_eval": w(root / "cls_eval.jsonl", tiny.toy_cls_rows(6, seed=1)),
        "preference": w(root / "pairs.jsonl", preference_pairs(BATCH)),
        "prompt": w(root / "prompts.jsonl", [{"prompt": q} for q in QUESTIONS[:BATCH]]),
        "kto": w(root / "kto.jsonl", kto_rows_of_pairs(preference_pairs(BATCH // 2))),  # chosen true, rejected false
    }


def eval_file(info) -> str:
    """The file `tuneforge eval` gets for a run of stage `info`: chat rows for every chat-template stage."""
    if info.model_kind != "causal_lm":
        return "classify_eval" if info.model_kind == "classifier" else "preference"
    return "sft" if info.chat_template else "pretrain"


def config(method: str, stage: str, files: dict[str, Path], model_dir: Path, output_dir: Path,
           words: tuple[str, ...] = ("eight",)) -> dict:
    from tuneforge.stage_info import stage_info

    records = stage_info(stage).records
    raw = {
        "model": str(model_dir), "stage": stage, "method": {"name": method, **METHOD_CONFIGS[method]},
        "data": {"train": str(files[records]), "eval": str(files[records])},
        "training": {"max_steps": STEPS, "learning_rate": LEARNING_RATES[method], "batch_size": BATCH,
                     "warmup_ratio": 0.0, "lr_scheduler": "constant", "max_length": 64, "progress": False,
                     "precision": "fp32", "report_to": []},
        "eval": {"generate_samples": 2, "max_new_tokens": 4, "max_samples": BATCH},
        "output_dir": str(output_dir), "seed": 0,
    }
    sampling = {"rewards": [{"function": REWARD, "kwargs": {"words": list(words)}}], "max_new_tokens": 4}
    if stage == "ppo":
        raw["ppo"] = {**sampling, "minibatch_size": 4}
    if stage == "grpo":
        raw["grpo"] = {**sampling, "num_generations": 4}
        raw["training"]["batch_size"] = 2  # prompts per step, each sampled num_generations times
    return raw


def outputs(model, ids: torch.Tensor) -> torch.Tensor:
    """Logits of one unpadded sequence: next-token logits for a causal LM, label logits for a classifier."""
    return model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits.float()
