"""`model:` naming an earlier run (stages chain), and the one function every loader resolves a model name
through. A full / freeze run directory is already a whole model. An adapter run is merged into its base
once, verified like `tuneforge merge` (reloaded logits within 1e-4), and cached under
TUNEFORGE_HOME/runs/<name>-<hash> keyed by the run's config and adapter bytes. Its base is resolved by this
same function, so a chain of runs resolves link by link.

    path = resolve_model("runs/sft")        # alias, directory, hub id or finished run -> a loadable path
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tuneforge.config.load import load_config
from tuneforge.config.schema import Config
from tuneforge.errors import ModelError
from tuneforge.methods import METHODS, LoadBase
from tuneforge.models.hub import no_such_directory, resolve_path, tuneforge_home
from tuneforge.models.pretrained import load_pretrained, load_tokenizer_from
from tuneforge.models.safety import check_model_dir
from tuneforge.models.verify import merge_and_verify, probe_inputs
from tuneforge.stage_info import STAGE_INFO, stage_info


def run_config(run_dir: str | Path) -> Config:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise no_such_directory(str(run_dir))
    if not (run_dir / "config.yaml").is_file():
        raise ModelError(f"{run_dir}: not a tuneforge run (no config.yaml)")
    return load_config(run_dir / "config.yaml")


def resolve_model(name: str) -> str:
    """A finished run -> its model directory (merged and cached for an adapter run); anything else through
    tuneforge.models.hub.resolve_path (alias, directory, hub id)."""
    path = Path(name).expanduser()
    if (path / "config.yaml").is_file():
        return resolve_run(path)
    return resolve_path(name)


def run_loader(cfg: Config, labels: list[str] | None = None, quantize_4bit: bool = False) -> LoadBase:
    """What a method's `load` gets: `load_base(None)` loads the run's base (resolved through chaining),
    `load_base(path)` a whole-model directory, each with the class the run's stage needs."""

    def load_base(path: str | None = None):
        if path is None:
            return load_pretrained(resolve_model(cfg.model), cfg.model, cfg.trust_remote_code,
                                   quantize_4bit=quantize_4bit, labels=labels)
        return load_pretrained(path, path, cfg.trust_remote_code, labels=labels)

    return load_base


def _refuse_unchainable(run_dir: Path, cfg: Config) -> None:
    method = METHODS[cfg.method.name]
    if not stage_info(cfg.stage).chainable:
        raise ModelError(f"model {str(run_dir)!r}: a {cfg.stage} run is not a language model to continue from "
                         f"(a reward run is a reward source: ppo.rewards / grpo.rewards [{{run: ...}}]; runs of "
                         f"{', '.join(n for n, i in STAGE_INFO.items() if i.chainable)} chain)")
    if method.quantized_base:
        # Merging folds the adapter into the unquantised base, which is not the 4-bit policy that trained.
        raise ModelError(
            f"model {str(run_dir)!r}: a {cfg.method.name} run was trained on a 4-bit base, so it cannot be continued "
            f"from as it was trained. Run `tuneforge merge {run_dir}` and pass the merged directory as model: "
            "(it is merged into the unquantised base; merge.json reports the quantization difference)")
    if not method.saves_whole_model and not method.mergeable:
        raise ModelError(f"model {str(run_dir)!r}: a {cfg.method.name} run cannot be continued from "
                         f"({method.why_not_mergeable})")


def resolve_run(run_dir: Path) -> str:
    cfg = run_config(run_dir)
    _refuse_unchainable(run_dir, cfg)
    check_model_dir(run_dir, str(run_dir), cfg.trust_remote_code)  # pickles / remote code: refused, never run
    method = METHODS[cfg.method.name]
    if method.saves_whole_model:  # the run directory is the model
        return str(run_dir)
    adapter_files = sorted(run_dir.glob("adapter_*"))
    if not adapter_files:
        raise ModelError(f"model {str(run_dir)!r}: the run has no saved model or adapter (did it finish?)")
    digest = hashlib.sha256((run_dir / "config.yaml").read_bytes())
    for f in adapter_files:
        digest.update(f.read_bytes())
    dest = tuneforge_home() / "runs" / f"{run_dir.resolve().name}-{digest.hexdigest()[:16]}"
    if not (dest / "config.json").is_file():
        load_base = run_loader(cfg)
        model = method.load(load_base, run_dir).eval()
        tokenizer = load_tokenizer_from(run_dir, str(run_dir), cfg.trust_remote_code)
        report = {"run": str(run_dir.resolve()), "method": cfg.method.name, "base": cfg.model}
        merge_and_verify(model, tokenizer, dest, probe_inputs(run_dir), lambda p: load_base(str(p)),
                         copy=[run_dir / "template.json"], report=report)
    return str(dest)
