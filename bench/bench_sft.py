"""One-epoch LoRA SFT benchmark: seed recipe vs TRL SFTTrainer defaults vs tuneforge defaults.

Same model (embedded `smollm2-135m-instruct`), same synthetic instruction data (seeded; alpaca-like
lengths: mean ~180 tokens, p99 ~500), same LoRA (r=8, alpha=16, dropout 0.05, q_proj/v_proj), batch 8,
lr 2e-4, max_length 512, one epoch:
  a  seed:      transformers.Trainer + peft, padding="max_length" (512), fp32, prompt and pad masked
  b  trl:       trl.SFTTrainer with its shipped defaults, conversational prompt/completion data
  c  tuneforge: tuneforge's own data path, LoRA method and training loop (`train()`), config defaults
Each recipe runs in a fresh subprocess of this script (so peak RSS is per recipe); the parent measures
a GEMM peak, collects JSON and prints the table, ratios and goals. Real tokens are counted by a forward
pre-hook on the trained model (attention-mask sum, or all tokens when no mask is fed). Eval loss is one
shared function: fp32, one sample per forward (no padding), mean cross-entropy per completion token.

    python bench/bench_sft.py                          # `make bench`: 256 train / 32 eval, ~35+ min on 2 cores
    python bench/bench_sft.py --train-samples 64       # reduced run (8 steps per recipe), figures in docs/benchmarks.md
    python bench/bench_sft.py --max-steps 3 --train-samples 32 --recipes a,c   # quick check
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tuneforge.models.load import resolve_model  # noqa: E402

MODEL, SEED, BATCH, LR, MAX_LEN = "smollm2-135m-instruct", 42, 8, 2e-4, 512
LORA = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
NAMES = {"a": "seed Trainer+peft", "b": "TRL SFTTrainer", "c": "tuneforge"}
Sample = dict[str, str]  # {"prompt", "completion"}

# ---------------------------------------------------------------- data (deterministic, offline)
TOPICS = ("photosynthesis, compound interest, the water cycle, machine learning, climate change, the French "
          "Revolution, vaccines, supply and demand, black holes, healthy sleep, remote work, public transport, "
          "recycling, the immune system, electric cars, time management, volcanoes, the stock market, renewable "
          "energy, social media, ancient Rome, plate tectonics, meditation, inflation, coral reefs, the internet, "
          "gardening, job interviews, budgeting, learning a language, bees, cloud computing, nutrition").split(", ")
AUDIENCES = ["a ten-year-old", "a college student", "a busy manager", "a beginner", "a retired teacher"]
ADJ = ("simple important small large modern natural complex useful common early careful steady local global quiet "
       "strong efficient surprising practical basic long-term clear").split()
NOUN = ("system process energy crowd plant cell budget city team idea method result change pattern market surface "
        "signal habit resource tool community structure goal problem schedule network material question").split()
VERB = ("affects supports creates reduces changes improves controls requires explains protects connects shapes "
        "limits drives measures produces transforms balances").split()
ADV = "often usually gradually quickly rarely directly eventually naturally".split()
LINK = ["However,", "In addition,", "For example,", "As a result,", "In other words,", "Over time,", "Finally,"]


def _sentence(r: random.Random) -> str:
    s = f"the {r.choice(ADJ)} {r.choice(NOUN)} {r.choice(ADV)} {r.choice(VERB)} the {r.choice(NOUN)}"
    if r.random() < 0.5:
        s += f" of the {r.choice(ADJ)} {r.choice(NOUN)}"
    if r.random() < 0.3:
        s += f", which {r.choice(VERB)} the way the {r.choice(NOUN)} works"
    return (f"{r.choice(LINK)} {s}" if r.random() < 0.35 else s[0].upper() + s[1:]) + "."


def _paragraph(r: random.Random, words: int) -> str:
    out: list[str] = []
    while sum(len(s.split()) for s in out) < words:
        out.append(_sentence(r))
    return " ".join(out)


def make_samples(n: int, seed: int) -> list[Sample]:
    """Instruction/response pairs from templates; a mix of short answers, explanations, lists, rewrites
    (with an input paragraph) and essays gives alpaca-like lengths with a long tail."""
    r, out = random.Random(seed), []
    for _ in range(n):
        topic = r.choice(TOPICS)
        kind = r.choices(["short", "explain", "list", "rewrite", "essay"], weights=[25, 30, 20, 15, 10])[0]
        if kind == "short":
            prompt, resp = f"In one sentence, what is the main idea behind {topic}?", _paragraph(r, r.randint(8, 30))
        elif kind == "explain":
            prompt = f"Explain {topic} to {r.choice(AUDIENCES)}."
            resp = _paragraph(r, int(r.lognormvariate(math.log(90), 0.5)))
        elif kind == "list":
            k = r.randint(3, 8)
            prompt = f"Give {k} practical tips about {topic}."
            resp = "\n".join(f"{i}. {_paragraph(r, r.randint(10, 35))}" for i in range(1, k + 1))
        elif kind == "rewrite":
            text = _paragraph(r, int(r.lognormvariate(math.log(60), 0.5)))
            prompt = (f"Rewrite the following paragraph about {topic} in a "
                      f"{r.choice(['formal', 'friendly', 'concise'])} tone.\n\n{text}")
            resp = _paragraph(r, int(len(text.split()) * r.uniform(0.6, 1.1)))
        else:
            prompt = f"Write a detailed essay about {topic}, with an introduction, a body and a conclusion."
            resp = "\n\n".join(_paragraph(r, int(r.lognormvariate(math.log(60), 0.4))) for _ in range(r.randint(2, 5)))
        out.append({"prompt": prompt, "completion": resp})
    return out


def chat(s: Sample) -> list[dict[str, str]]:
    return [{"role": "user", "content": s["prompt"]}, {"role": "assistant", "content": s["completion"]}]


def encode(tok: Any, s: Sample) -> tuple[list[int], int, int]:
    """(ids of the chat-rendered sample, first completion position, end of the completion through EOS)."""
    prompt = tok(tok.apply_chat_template(chat(s)[:1], tokenize=False, add_generation_prompt=True),
                 add_special_tokens=False)["input_ids"]
    ids = tok(tok.apply_chat_template(chat(s), tokenize=False), add_special_tokens=False)["input_ids"]
    assert ids[: len(prompt)] == prompt, "chat template does not render the prompt as a prefix"
    end = max(i + 1 for i, t in enumerate(ids) if t == tok.eos_token_id)
    return ids[:MAX_LEN], len(prompt), min(end, MAX_LEN)


@torch.no_grad()
def eval_loss(model: torch.nn.Module, examples: list[tuple[list[int], int, int]]) -> float:
    """THE eval metric for all recipes: fp32, batch 1 (no padding), mean CE per completion token (through EOS)."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for ids, start, end in examples:
        if end <= start:
            continue
        x = torch.tensor([ids[:end]])
        logits = model(input_ids=x, use_cache=False).logits[0, start - 1 : end - 1].float()
        total += float(F.cross_entropy(logits, x[0, start:end], reduction="sum"))
        count += end - start
    model.train(was)
    return total / count


class TokenCounter:
    """Counts what the training forward is fed: real tokens = attention-mask sum (all tokens when no mask)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.real = self.fed = self.calls = 0
        model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if not module.training:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        self.calls += 1
        self.fed += ids.numel()
        self.real += int(mask.sum()) if mask is not None else ids.numel()


# ---------------------------------------------------------------- recipes (each in its own process)
# A recipe prepares everything untimed and returns (model to count tokens on, the epoch to time, settings).
Recipe = tuple[torch.nn.Module, Callable[[], Any], dict[str, Any]]


def _hf_model() -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(resolve_model(MODEL), dtype=torch.float32)


def _peft_lora() -> Any:
    import peft

    return peft.LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                           target_modules=LORA["target_modules"], task_type="CAUSAL_LM")


def _fields(obj: Any, keys: str) -> dict[str, Any]:
    return {k: getattr(getattr(obj, k, "?"), "value", getattr(obj, k, "?")) for k in keys.split()}


def recipe_seed(train: list[Sample], tok: Any, tmp: str, max_steps: int) -> Recipe:
    import peft
    from transformers import Trainer, TrainingArguments, set_seed

    rows = []
    for s in train:
        enc = tok(tok.apply_chat_template(chat(s), tokenize=False), padding="max_length", max_length=MAX_LEN,
                  truncation=True, return_tensors="pt")
        n_prompt = len(tok(tok.apply_chat_template(chat(s)[:1], tokenize=False,
                                                   add_generation_prompt=True))["input_ids"])
        ids, mask = enc["input_ids"][0], enc["attention_mask"][0]
        labels = ids.clone()
        labels[:n_prompt] = -100
        labels[mask == 0] = -100  # pad == eos here, so padding is found by the mask, never by id
        rows.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    set_seed(SEED)
    model = peft.get_peft_model(_hf_model(), _peft_lora())
    args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=BATCH, learning_rate=LR, num_train_epochs=1,
                             max_steps=max_steps or -1, report_to="none", save_strategy="no", seed=SEED)
    trainer = Trainer(model=model, args=args, train_dataset=rows)
    settings = {**_fields(args, "bf16 gradient_checkpointing lr_scheduler_type warmup_steps optim"),
                "padding": f"max_length {MAX_LEN}", "matmul_dtype": "fp32"}
    return model, trainer.train, settings


def recipe_trl(train: list[Sample], tok: Any, tmp: str, max_steps: int) -> Recipe:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    data = Dataset.from_list([{"prompt": chat(s)[:1], "completion": chat(s)[1:]} for s in train])
    args = SFTConfig(output_dir=tmp, per_device_train_batch_size=BATCH, learning_rate=LR, num_train_epochs=1,
                     max_steps=max_steps or -1, max_length=MAX_LEN, report_to="none", save_strategy="no",
                     use_cpu=True)  # without it, TRL's default bf16=True is refused on a machine with no GPU
    trainer = SFTTrainer(model=_hf_model(), args=args, train_dataset=data, processing_class=tok,
                         peft_config=_peft_lora())
    settings = {**_fields(args, "gradient_checkpointing bf16 packing padding_free completion_only_loss "
                                "assistant_only_loss loss_type lr_scheduler_type warmup_steps pad_to_multiple_of "
                                "optim"),
                **{f"resolved_{k}": v for k, v in _fields(trainer, "padding_free completion_only_loss").items()},
                "matmul_dtype": "bf16" if args.bf16 else "fp32"}
    return trainer.model, trainer.train, settings


def recipe_tuneforge(train: list[Sample], tok: Any, tmp: str, max_steps: int) -> Recipe:
    from tuneforge.config.schema import Config
    from tuneforge.data.dataset import load_examples
    from tuneforge.data.templates import apply_template
    from tuneforge.methods import METHODS, MethodContext
    from tuneforge.models import load_model, load_tokenizer
    from tuneforge.stages.lm import check_config
    from tuneforge.train.loop import train as tf_train
    from tuneforge.train.precision import resolve_precision

    path = Path(tmp) / "train.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in train), encoding="utf-8")
    training: dict[str, Any] = {"batch_size": BATCH, "learning_rate": LR, "epochs": 1, "max_length": MAX_LEN}
    if max_steps:
        training["max_steps"] = max_steps
    cfg = Config.model_validate({"model": MODEL, "stage": "sft", "method": {"name": "lora", **LORA},
                                 "data": {"train": str(path)}, "training": training, "output_dir": f"{tmp}/run"})
    check_config(cfg)  # the steps of tuneforge.stages.lm.run_lm, minus evaluation, generation and saving
    tf_tok = load_tokenizer(cfg.model)
    apply_template(tf_tok, cfg.data.template)
    examples, _ = load_examples(cfg, tf_tok, cfg.data.train)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    t, method = cfg.training, METHODS[cfg.method.name]
    precision = resolve_precision(t.precision)
    model = load_model(cfg.model, quantize_4bit=method.quantized_base)
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = method.apply(model, cfg.method,
                         MethodContext(resolve_model(cfg.model), gradient_checkpointing=t.gradient_checkpointing))
    Path(cfg.output_dir).mkdir(parents=True)
    settings = {**_fields(t, "precision packing lr_scheduler warmup_ratio gradient_checkpointing"),
                "resolved_precision": precision, "matmul_dtype": precision}
    return model, lambda: tf_train(model, examples, [], cfg, Path(cfg.output_dir), precision,
                                   log=lambda _: None, packed=method.packing), settings


RECIPES = {"a": recipe_seed, "b": recipe_trl, "c": recipe_tuneforge}


def run_child(args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(MODEL))
    evals = [encode(tok, s) for s in make_samples(args.eval_samples, SEED + 1)]
    with tempfile.TemporaryDirectory(prefix=f"bench-{args.recipe}-") as tmp:
        model, fit, settings = RECIPES[args.recipe](make_samples(args.train_samples, SEED), tok, tmp, args.max_steps)
        base = eval_loss(model, evals)  # LoRA B starts at 0, so this is the base model: equal for every recipe
        counter = TokenCounter(model)
        t0, cpu0 = time.perf_counter(), time.process_time()
        fit()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    non_emb = (sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
               - model.get_input_embeddings().weight.numel())
    result = {"wall_s": wall, "cpu_s": cpu, "real_tokens": counter.real, "fed_tokens": counter.fed,
              "forwards": counter.calls,
              "settings": settings, "eval_loss_base": base, "eval_loss": eval_loss(model, evals),
              "non_embedding_params": non_emb, "threads": torch.get_num_threads(),
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    Path(args.child_out).write_text(json.dumps(result), encoding="utf-8")


# ---------------------------------------------------------------- parent: peak, children, report
def gemm_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 2.0, window: float = 0.25) -> float:
    """Best FLOP/s over short windows of n x n GEMMs (the best window, since the cores may be shared)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        iters, t0 = 0, time.perf_counter()
        while iters == 0 or time.perf_counter() - t0 < window:
            a @ b
            iters += 1
        best = max(best, 2 * n**3 * iters / (time.perf_counter() - t0))
    return best


def data_stats(train: list[Sample]) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(MODEL))
    lens = sorted(len(tok(tok.apply_chat_template(chat(s), tokenize=False))["input_ids"]) for s in train)
    return {"samples": len(lens), "mean": round(statistics.mean(lens), 1), "p50": lens[len(lens) // 2],
            "p99": lens[int(0.99 * (len(lens) - 1))], "max": lens[-1],
            "over_max_length": sum(x > MAX_LEN for x in lens)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-samples", type=int, default=256)
    p.add_argument("--eval-samples", type=int, default=32)
    p.add_argument("--max-steps", type=int, default=0,
                   help="cap each recipe at this many optimizer steps (0: one epoch)")
    p.add_argument("--recipes", default="a,b,c")
    p.add_argument("--out", default="bench/results/sft.json")
    p.add_argument("--recipe", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.recipe:
        return run_child(args)

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    stats = data_stats(make_samples(args.train_samples, SEED))
    peak = {"fp32": gemm_peak(torch.float32), "bf16": gemm_peak(torch.bfloat16)}
    results: dict[str, dict] = {}
    for r in args.recipes.split(","):
        probe = gemm_peak(torch.float32, seconds=1.0)  # how loaded the (possibly shared) cores are right now
        peak["fp32"] = max(peak["fp32"], probe)
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            cmd = [sys.executable, __file__, "--recipe", r, "--child-out", f.name,
                   "--train-samples", str(args.train_samples),
                   "--eval-samples", str(args.eval_samples), "--max-steps", str(args.max_steps)]
            print(f"== recipe {r} ({NAMES[r]}) ...", flush=True)
            proc = subprocess.run(cmd)
            results[r] = json.loads(Path(f.name).read_text()) if proc.returncode == 0 else {"error": proc.returncode}
        results[r]["probe_fp32_gflops"] = probe / 1e9
    for k, v in {"fp32": gemm_peak(torch.float32), "bf16": gemm_peak(torch.bfloat16)}.items():
        peak[k] = max(peak[k], v)  # the best of every measurement in the run is the peak
    report(args, stats, peak, results)


GOALS = {"speedup_c_vs_a": (">=", 3.0), "speedup_c_vs_b": (">=", 1.5), "eval_loss_c_over_a": ("<=", 1.02)}


def report(args: argparse.Namespace, stats: dict, peak: dict, results: dict[str, dict]) -> None:
    ok = {k: v for k, v in results.items() if "error" not in v}
    print(f"\ndata: {stats} (tokens incl. chat template; eval: {args.eval_samples} held-out samples)")
    print(f"GEMM peak 2048x2048, {torch.get_num_threads()} threads: "
          f"fp32 {peak['fp32'] / 1e9:.1f}, bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s")
    for k, v in results.items():
        print(f"settings {k} {NAMES[k]}: " + ", ".join(f"{n}={x}" for n, x in v.get("settings", v).items()))
    print("\nMFU = 4 x non-embedding params x real tokens / wall / GEMM peak of the recipe's matmul dtype\n"
          "      (LoRA: frozen base, no weight gradients; gradient-checkpointing recomputation not counted)\n"
          "probe = fp32 GEMM GFLOP/s measured just before the recipe: well under the peak means shared cores\n"
          "cpu s = CPU seconds of the recipe process during the epoch; cores = cpu s / wall s (2 = had both cores)")
    head = ("recipe                 wall s   cpu s  cores  real tok   fed tok  real tok/s  peak RSS MB  eval base"
            "  eval tuned    MFU       probe")
    print(head + "\n" + "-" * len(head))
    for k, v in results.items():
        if "error" in v:
            print(f"{k} {NAMES[k]}: FAILED (exit {v['error']}; see its output above)")
            continue
        dtype = v["settings"]["matmul_dtype"]
        v["tokens_per_s"] = v["real_tokens"] / v["wall_s"]
        v["mfu"] = 4 * v["non_embedding_params"] * v["tokens_per_s"] / peak[dtype]
        print(f"{k} {NAMES[k]:<18} {v['wall_s']:>8.1f} {v['cpu_s']:>7.0f} {v['cpu_s'] / v['wall_s']:>6.2f}"
              f" {v['real_tokens']:>9} {v['fed_tokens']:>9} {v['tokens_per_s']:>11.1f}"
              f" {v['peak_rss_mb']:>12.0f} {v['eval_loss_base']:>10.4f} {v['eval_loss']:>11.4f}"
              f" {100 * v['mfu']:>5.1f}% {dtype}"
              f" {v['probe_fp32_gflops']:>7.0f}")
    ratios, goals = {}, {}
    for o in ("a", "b"):
        if {"c", o} <= ok.keys():
            ratios[f"speedup_c_vs_{o}"] = ok[o]["wall_s"] / ok["c"]["wall_s"]
            ratios[f"tok_per_s_c_vs_{o}"] = ok["c"]["tokens_per_s"] / ok[o]["tokens_per_s"]
            ratios[f"cpu_s_ratio_{o}_over_c"] = ok[o]["cpu_s"] / ok["c"]["cpu_s"]  # less sensitive to shared cores
    if {"a", "c"} <= ok.keys():
        ratios["eval_loss_c_over_a"] = ok["c"]["eval_loss"] / ok["a"]["eval_loss"]
    print("\nratios: " + (", ".join(f"{k} {v:.2f}" for k, v in ratios.items()) or "none (needs recipe c and a or b)"))
    for name, (op, target) in GOALS.items():
        if name in ratios:
            passed = ratios[name] >= target if op == ">=" else ratios[name] <= target
            goals[name] = {"value": ratios[name], "target": f"{op} {target}", "pass": passed}
            print(f"goal {name} {op} {target}: {ratios[name]:.3f} -> {'PASS' if passed else 'FAIL'}")
    if args.max_steps:
        print(f"note: --max-steps {args.max_steps}: not a full epoch, so the goals are indicative only")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "data": stats, "peak_flops": peak, "results": results,
                               "ratios": ratios, "goals": goals}, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
