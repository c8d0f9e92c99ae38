"""`tuneforge merge --combine RUN_A RUN_B ...`: combine LoRA adapter runs trained on the same base into one
adapter with peft's `add_weighted_adapter` (linear, cat, ties, dare_linear, dare_ties, ...), fold it into a
standalone model and prove it as `merge` does (reload from disk, logits equal the combined adapter model's:
fp32, atol 1e-4; tuneforge.models.verify). Runs that cannot combine are refused before anything is written.

    tuneforge merge --combine runs/a runs/b --how linear --weights 0.5,0.5 --output runs/ab
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tuneforge.device import for_command, place
from tuneforge.errors import UserError
from tuneforge.methods import METHODS
from tuneforge.models.chain import resolve_model, run_loader
from tuneforge.models.verify import merge_and_verify, probe_inputs
from tuneforge.runs import load_run, run_config
from tuneforge.stage_info import stage_info

__all__ = ["HOWS", "SAME_RANK", "combine", "parse_weights"]

# peft 0.21's add_weighted_adapter combination types for LoRA (the *_svd and magnitude_prune variants too).
HOWS = ("linear", "cat", "ties", "dare_linear", "dare_ties", "magnitude_prune", "svd", "ties_svd",
        "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")
SAME_RANK = frozenset({"linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"})  # peft needs equal r
PRUNES = frozenset({"ties", "dare_linear", "dare_ties", "magnitude_prune", "ties_svd", "dare_linear_svd",
                    "dare_ties_svd", "magnitude_prune_svd"})  # these use --density


def parse_weights(text: str | None, n: int) -> list[float]:
    """'0.5,0.5' -> [0.5, 0.5]; None -> equal weights summing to 1."""
    if text is None:
        return [1.0 / n] * n
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise UserError(f"--weights {text!r}: expected comma-separated numbers, e.g. 0.5,0.5") from None
    if len(weights) != n:
        raise UserError(f"--weights {text!r}: {len(weights)} weights for {n} runs; give one per run")
    return weights


def _facts(run_dir: Path) -> dict:
    """What decides whether a run can combine with others, from its config and saved adapter."""
    cfg = run_config(run_dir)
    method = METHODS[cfg.method.name]
    if not method.mergeable:
        raise UserError(f"{run_dir}: a {cfg.method.name} run cannot be combined ({method.why_not_mergeable})")
    info = stage_info(cfg.stage)
    if info.model_kind != "causal_lm":
        raise UserError(f"{run_dir}: a {cfg.stage} run ({info.model_kind}) cannot be combined: each run "
                        "trains its own head (peft modules_to_save), which add_weighted_adapter cannot combine; "
                        "combine causal-LM runs")
    path = run_dir / "adapter_config.json"
    if not path.is_file() or not (run_dir / "adapter_model.safetensors").is_file():
        raise UserError(f"{run_dir}: no adapter_config.json / adapter_model.safetensors (did the run finish?)")
    adapter = json.loads(path.read_text())
    if adapter.get("peft_type") != "LORA":
        raise UserError(f"{run_dir}: combining needs LoRA adapters; this run's adapter is {adapter.get('peft_type')} "
                        f"(method {cfg.method.name})")
    if adapter.get("use_dora"):
        raise UserError(f"{run_dir}: a DoRA adapter cannot be combined (peft's add_weighted_adapter has no "
                        "magnitude vectors to combine); merge it alone with `tuneforge merge`")
    ranks = [adapter["r"], *(adapter.get("rank_pattern") or {}).values()]
    return {"run": run_dir, "cfg": cfg, "base": str(Path(resolve_model(cfg.model)).resolve()),
            "model_kind": info.model_kind, "r": max(ranks), "method": cfg.method.name,
            "quantized": method.quantized_base}


def _check_same(facts: list[dict], how: str) -> None:
    first = facts[0]
    keys = ["base", "model_kind"] + (["r"] if how in SAME_RANK else [])
    for other in facts[1:]:
        for key in keys:
            if other[key] != first[key]:
                why = f" (--how {how} needs equal ranks; --how cat or an *_svd type does not)" if key == "r" else ""
                raise UserError(f"cannot combine {other['run']} with {first['run']}: {key} differs "
                                f"({other[key]!r} vs {first[key]!r}){why}")


def _unit_scale(model, name: str) -> None:
    """add_weighted_adapter folds each source's scaling into the combined weights and sets lora_alpha = r, i.e.
    scale 1 for plain LoRA; but it copies use_rslora from the first source, which makes the scale sqrt(r) and
    the combination sqrt(r) times too strong. Undo that: scale 1 in every layer and in the saved config."""
    config = model.peft_config[name]
    if not config.use_rslora:
        return
    config.use_rslora = False
    for module in model.modules():
        scaling = getattr(module, "scaling", None)
        if isinstance(scaling, dict) and name in scaling:
            scaling[name] = 1.0


def combine(run_dirs: list[str | Path], output: str | Path, how: str = "linear", weights: list[float] | None = None,
            density: float | None = None, atol: float = 1e-4, seed: int = 0, device: str | None = None) -> Path:
    """`device`: --device (default: the first run's training.device); the combination and its check run there."""
    runs = [Path(r) for r in run_dirs]
    if len(runs) < 2:
        raise UserError("--combine needs at least two runs")
    if how not in HOWS:
        raise UserError(f"--how {how!r}: expected one of {', '.join(HOWS)}")
    weights = weights if weights is not None else [1.0 / len(runs)] * len(runs)
    if len(weights) != len(runs):
        raise UserError(f"--weights: {len(weights)} weights for {len(runs)} runs; give one per run")
    if how in PRUNES:
        density = 0.5 if density is None else density
        if not 0.0 < density <= 1.0:
            raise UserError(f"--density {density}: expected a fraction in (0, 1]")
    elif density is not None:
        raise UserError(f"--density applies to pruning types ({', '.join(sorted(PRUNES))}), not --how {how}")
    output = Path(output)
    if output.exists():
        raise UserError(f"{output} already exists; remove it or pass another --output")
    facts = [_facts(r) for r in runs]
    _check_same(facts, how)
    where = for_command(device, run_config(runs[0]).training.device)

    model, tokenizer, cfg = load_run(runs[0], dequantize=True)  # qlora: combined on the unquantized base
    names = ["default"] + [f"run{i}" for i in range(1, len(runs))]
    for name, run in zip(names[1:], runs[1:], strict=True):
        model.load_adapter(str(run), adapter_name=name)
    torch.manual_seed(seed)  # dare_* drop entries at random
    try:
        model.base_model.add_weighted_adapter(names, weights, "combined", combination_type=how, density=density)
    except (ValueError, TypeError) as exc:
        raise UserError(f"peft cannot combine {', '.join(map(str, runs))} with --how {how}: {exc}") from None
    _unit_scale(model, "combined")
    model.set_adapter("combined")
    place(model, where).eval()
    texts = list(dict.fromkeys(t for r in runs for t in probe_inputs(r)))  # each run's prompts, in order
    report = {"runs": [str(r) for r in runs], "methods": [f["method"] for f in facts], "base": cfg.model,
              "how": how, "weights": weights, "density": density, "seed": seed,
              "chat_template_from": str(runs[0])}
    if any(f["quantized"] for f in facts):
        report["note"] = "qlora runs combined on the unquantized base (their 4-bit training base differs)"
    diff = merge_and_verify(model, tokenizer, output, texts, lambda p: place(run_loader(cfg)(str(p)), where), atol,
                            copy=[runs[0] / "template.json"], report=report)
    print(f"combined {len(runs)} runs ({how}, weights {weights}) -> {output} (max |logit diff| {diff:.2e} <= {atol})")
    return output
