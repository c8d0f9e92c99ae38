"""Issue 20's reference: a plain ~40-line transformers + peft loop on the defaults study's fact task, next to
tuneforge given the same explicit settings (LoRA r 8, alpha 16, q_proj/v_proj, lr 1e-3, batch 8, 20 epochs) and
its defaults for everything else. Both are judged alike: greedy generation of each held-out question through the
model's chat template, tuneforge's exact_match.

    python bench/fact_loop.py --seeds 0,1 --json bench/results/fact_loop.json
    python bench/fact_loop.py --seeds 0 --arms tuneforge --json /tmp/f.json   # one arm (after a default changed)
    python bench/fact_loop.py --render > docs/fact-loop.md   # the table of the RENDERED runs (a test checks it)

The loop: constant rate, no clipping, no dropout, AdamW's own weight decay (0.01), bf16 autocast where the CPU
has it, loss on the answer tokens only. The goal (issue 20): tuneforge matches or beats the loop.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import defaults_study  # noqa: E402

SETTINGS = {"r": 8, "alpha": 16, "targets": ["q_proj", "v_proj"], "lr": 1e-3, "batch": 8, "epochs": 20}


def run_loop(model_dir: str, train: list[dict], evals: list[dict], seed: int) -> float:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.evaluation.metrics import exact_match

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=SETTINGS["r"], lora_alpha=SETTINGS["alpha"], lora_dropout=0.0,
                                             target_modules=SETTINGS["targets"], task_type="CAUSAL_LM"))
    rows = []
    for row in train:  # prompt ids, then the answer through the template's end of turn: loss on the answer only
        prompt = tok.apply_chat_template(row["messages"][:1], add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template(row["messages"], tokenize=False)
        p, f = tok(prompt, add_special_tokens=False)["input_ids"], tok(full, add_special_tokens=False)["input_ids"]
        rows.append((f, [-100] * len(p) + f[len(p):]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=SETTINGS["lr"])
    rng = random.Random(seed)
    model.train()
    for _ in range(SETTINGS["epochs"]):
        rng.shuffle(rows)
        for i in range(0, len(rows), SETTINGS["batch"]):
            batch = rows[i:i + SETTINGS["batch"]]
            n = max(len(ids) for ids, _ in batch)
            ids = torch.tensor([x + [tok.pad_token_id] * (n - len(x)) for x, _ in batch])
            labels = torch.tensor([y + [-100] * (n - len(y)) for _, y in batch])
            mask = torch.tensor([[1] * len(x) + [0] * (n - len(x)) for x, _ in batch])
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
    model.eval()
    preds = []
    for row in evals:
        prompt = tok.apply_chat_template(row["messages"][:1], add_generation_prompt=True, return_tensors="pt",
                                         return_dict=True)
        with torch.no_grad():
            out = model.generate(**prompt, max_new_tokens=16, do_sample=False)
        preds.append(tok.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True))
    return exact_match(preds, [row["messages"][1]["content"] for row in evals])


# what the loop does that tuneforge's defaults did not (issue 20): a constant rate, no clipping, no dropout
LOOP_LIKE = {"training": {"lr_scheduler": "constant", "warmup_ratio": 0.0, "max_grad_norm": None},
             "method": {"dropout": 0.0}}


def run_tuneforge(model: str, train: list[dict], evals: list[dict], seed: int, work: Path,
                  extra: dict | None = None) -> float:
    from tuneforge.config.schema import Config
    from tuneforge.stages import STAGES

    raw = {"model": model, "stage": "sft",
           "method": {"name": "lora", "r": SETTINGS["r"], "alpha": SETTINGS["alpha"],
                      "target_modules": SETTINGS["targets"]},
           "data": {"train": str(defaults_study._write(train, work / "train.jsonl")),
                    "eval": str(defaults_study._write(evals, work / "eval.jsonl"))},
           "training": {"learning_rate": SETTINGS["lr"], "batch_size": SETTINGS["batch"],
                        "epochs": SETTINGS["epochs"], "progress": False, "report_to": []},
           "eval": {"before": False, "generate_samples": len(evals), "max_new_tokens": 16},
           "output_dir": str(work / "run"), "seed": seed}
    for block, keys in (extra or {}).items():
        raw[block].update(keys)
    out = STAGES["sft"].run(Config.model_validate(raw), lambda _msg: None)
    return json.loads((out / "metrics.json").read_text())["eval_after"]["exact_match"]


ROOT = Path(__file__).resolve().parent.parent
RENDERED = ("bench/results/fact_loop.json", "bench/results/fact_loop_s11.json")  # docs/fact-loop.md's runs


def render(paths: tuple[str, ...] = RENDERED) -> str:
    """docs/fact-loop.md: one row per run file and seed, the commit that ran it (a file written before the
    JSON recorded it says so), each arm's exact match ('-': not run)."""
    about = ("Both arms train LoRA r 8, alpha 16 on q_proj/v_proj at 1e-3, batch 8, 20 epochs on the defaults "
             "study's fact task (64 countries' ISO alpha-3 codes from pycountry, a different 64 per seed) and are "
             "judged alike (greedy generation, exact match on the same facts asked in other words). The loop: "
             "constant rate, no clipping, no dropout, bf16 autocast. tuneforge: those explicit keys, its defaults "
             "for the rest; *loop-like* adds the loop's schedule, clipping and dropout. LoRA's default schedule "
             "became a constant rate without warmup in commit b8ff91c: tuneforge rows of runs before it trained "
             "with cosine after 3% warmup.")
    lines = ["# tuneforge against the issue's 40-line loop (the fact task)", "",
             "Rendered by `python bench/fact_loop.py --render > docs/fact-loop.md` from "
             + ", ".join(f"`{p}`" for p in paths) + " (a test checks it). " + about, "",
             "| run | commit | seed | loop | tuneforge | tuneforge, loop-like |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for path in paths:
        report = json.loads((ROOT / path).read_text())
        commit = ((report.get("environment") or {}).get("git") or {}).get("commit") or ""
        for r in report["results"]:
            cells = [f"{r[k]:.3f}" if r.get(k) is not None else "-" for k in ("loop", "tuneforge",
                                                                           "tuneforge_loop_like")]
            lines.append(f"| {Path(path).name} | {commit[:7] or 'not recorded'} | {r['seed']} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--quick", action="store_true", help="16 facts, 2 epochs (CI: the script runs)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--threads", type=int, help="torch threads (1 on a shared, loaded machine)")
    parser.add_argument("--loop-like", action="store_true",
                        help="also run tuneforge with the loop's schedule, clipping and dropout (a diagnosis)")
    parser.add_argument("--arms", default="loop,tuneforge",
                        help="which of loop, tuneforge to run (an arm left out records null)")
    parser.add_argument("--render", action="store_true", help="print docs/fact-loop.md from the RENDERED runs")
    args = parser.parse_args(argv)
    if args.render:
        print(render(), end="")
        return {}
    arms = set(args.arms.split(","))
    if not arms or arms - {"loop", "tuneforge"}:
        parser.error(f"--arms: a comma list of loop, tuneforge (got {args.arms!r})")
    from tuneforge.models.hub import resolve_path

    if args.quick:
        SETTINGS["epochs"] = 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model_dir = resolve_path(args.model)
    results = []
    for seed in (int(s) for s in args.seeds.split(",")):
        train, evals = defaults_study.make_facts(args.quick, seed)
        with tempfile.TemporaryDirectory(prefix="fact-loop-") as work:
            for sub in ("defaults", "loop-like"):
                (Path(work) / sub).mkdir()
            t0 = time.perf_counter()
            loop = run_loop(model_dir, train, evals, seed) if "loop" in arms else None
            t1 = time.perf_counter()
            if loop is not None:
                print(f"seed {seed}: exact match loop {loop:.3f} ({t1 - t0:.0f}s)", flush=True)
            ours = run_tuneforge(args.model, train, evals, seed, Path(work) / "defaults") if "tuneforge" in arms \
                else None
            t2 = time.perf_counter()
            like = (run_tuneforge(args.model, train, evals, seed, Path(work) / "loop-like", LOOP_LIKE)
                    if args.loop_like else None)
            t3 = time.perf_counter()
        results.append({"seed": seed, "loop": loop, "tuneforge": ours, "tuneforge_loop_like": like,
                        "loop_s": t1 - t0 if loop is not None else None,
                        "tuneforge_s": t2 - t1 if ours is not None else None,
                        "loop_like_s": t3 - t2 if like is not None else None})
        shown = [(name, value, secs) for name, value, secs in (("loop", loop, t1 - t0), ("tuneforge", ours, t2 - t1),
                                                                ("tuneforge loop-like", like, t3 - t2))
                 if value is not None]
        print(f"seed {seed}: exact match " + ", ".join(f"{n} {v:.3f} ({s:.0f}s)" for n, v, s in shown), flush=True)
    from env_record import with_environment

    return with_environment({"settings": SETTINGS, "facts": len(evals), "arms": sorted(arms), "results": results},
                            args.json)


if __name__ == "__main__":
    main()
