"""Load a YAML config, apply `dotted.key=value` overrides, validate, and explain every error by key and line.

A run's saved config.yaml starts with `tuneforge_version` and `run_format` (RUN_FORMAT; metrics.json carries
the same `run_header()`): a run written by a newer format is refused in one line, a key that was removed or
renamed since (RETIRED_KEYS) is named with what replaced it. A local `model:` path is made absolute when
loaded and saved, so a run chained from another loads from any working directory.

    cfg = load_config("examples/quickstart.yaml", ["training.max_steps=10"])
"""

from __future__ import annotations

import difflib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tuneforge import __version__
from tuneforge.config.schema import METHOD_CONFIGS, STAGE_BLOCKS, Config
from tuneforge.errors import ConfigError
from tuneforge.secrets import (
    SECRETS_ENV,
    count_redactions,
    is_secret_key,
    redact_config,
    redact_text,
    restore_secrets,
)

# The format of a run directory's files (config.yaml, metrics.json): raise it when their meaning changes, so
# an older tuneforge refuses a newer run in one line instead of misreading it.
RUN_FORMAT = 1
# Keys that existed once: dotted key -> (the key that replaced it, or None when the value has no new home;
# what to do now). A config (an old run's config.yaml included) that still has one loads with a warning.
RETIRED_KEYS: dict[str, tuple[str | None, str]] = {
    "training.packing": (None, "packing is always on since tuneforge 0.1; training.pack_length sets the "
                               "packed row length"),
}


def run_header() -> dict[str, object]:
    """What every run file (config.yaml, metrics.json) starts with: the tuneforge version and RUN_FORMAT."""
    return {"tuneforge_version": __version__, "run_format": RUN_FORMAT}


def _line_map(node: yaml.Node, prefix: str = "") -> dict[str, int]:
    """dotted key -> 1-based line of that key in the YAML file."""
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            lines[key] = key_node.start_mark.line + 1
            lines.update(_line_map(value_node, key + "."))
    return lines


def _parse_value(text: str) -> Any:
    """`key=value` values are YAML scalars: 10 -> int, 1e-4 -> float, true -> bool, [a,b] -> list."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string; users mean a float
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {redact_text(item)!r}: expected dotted.key=value, e.g. training.max_steps=10")
        key, _, text = item.partition("=")
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {key.strip()!r}: expected dotted.key=value, e.g. training.max_steps=10")
        node = raw
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {key.strip()!r}: {part!r} is not a mapping")
            node = child
        node[parts[-1]] = _parse_value(text)
    return raw


def _strip_tags(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """pydantic puts the union tag in the location (method.lora.r); users wrote method.r."""
    if len(loc) > 1 and loc[0] == "method" and loc[1] in METHOD_CONFIGS:
        return (loc[0], *loc[2:])
    return loc


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...], method: str | None) -> list[str]:
    """The field names valid at `loc` (for did-you-mean)."""
    if loc[:1] == ("method",) and len(loc) == 2:
        return list(METHOD_CONFIGS[method].model_fields) if isinstance(method, str) and method in METHOD_CONFIGS else []
    current: Any = model
    for part in loc[:-1]:
        field = current.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if current is None:
            return []
    return list(current.model_fields)


def _explain(err: ValidationError, source: str, lines: dict[str, int], method: str | None) -> str:
    out = []
    for e in err.errors():
        loc = _strip_tags(tuple(e["loc"]))
        key = ".".join(str(p) for p in loc)
        where = f"{source}:{lines[key]}" if key in lines else source
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(Config, loc, method)
            guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f"; did you mean {'.'.join([*map(str, loc[:-1]), guess[0]])!r}?" if guess else ""
            out.append(f"{where}: unknown key {key!r}{hint} (allowed here: {', '.join(allowed)})")
        elif e["type"] in ("union_tag_invalid", "union_tag_not_found"):
            out.append(f"{where}: key 'method.name': expected one of {', '.join(METHOD_CONFIGS)} (got {method!r})")
        elif e["type"] == "missing":
            out.append(f"{where}: missing required key {key!r}")
        elif e["type"] == "value_error":  # a model validator's own message says what was expected
            msg = e["msg"].removeprefix("Value error, ")
            out.append(f"{where}: key {key!r}: {msg}" if key else f"{where}: {msg}")
        else:
            out.append(f"{where}: key {key!r}: {e['msg']} (got {_shown(loc, e.get('input'))})")
    return redact_text("invalid config:\n  " + "\n  ".join(out))


def _shown(loc: tuple[Any, ...], value: Any) -> str:
    """A bad value as the error echoes it: secrets masked, long values cut."""
    secret = any(is_secret_key(part) for part in loc)
    text = repr(redact_config(value, "secret" if secret else None))
    return text if len(text) <= 200 else text[:200] + "..."


def _check_header(raw: dict[str, Any], where: str) -> bool:
    """Pop the run header; refuse a run format newer than this tuneforge reads. True for a saved run."""
    version, fmt = raw.pop("tuneforge_version", None), raw.pop("run_format", None)
    if fmt is None:
        return False
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        raise ConfigError(f"{where}: key 'run_format': expected a positive integer (got {str(fmt)[:40]!r})")
    if fmt > RUN_FORMAT:
        raise ConfigError(f"{where}: written by tuneforge {str(version)[:40]} (run format {fmt}); tuneforge "
                          f"{__version__} reads run formats up to {RUN_FORMAT}: upgrade tuneforge to use this run")
    return True


def _retire_keys(raw: dict[str, Any], where: str, lines: dict[str, int]) -> None:
    """Drop (or move, for a renamed key) every RETIRED_KEYS entry in `raw`, each with one warning line."""
    for dotted, (new, why) in RETIRED_KEYS.items():
        *parents, key = dotted.split(".")
        node: Any = raw
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or key not in node:
            continue
        value = node.pop(key)
        at = f"{where}:{lines[dotted]}" if dotted in lines else where
        if new is not None and value is not None:
            *new_parents, new_key = new.split(".")
            target: Any = raw
            for part in new_parents:
                target = target.setdefault(part, {}) if isinstance(target, dict) else None
            if isinstance(target, dict) and new_key not in target:
                target[new_key] = value
            warnings.warn(f"{at}: key {dotted!r} was renamed to {new!r} ({why}); read as {new!r}", stacklevel=3)
        else:
            warnings.warn(f"{at}: key {dotted!r} was removed ({why}); ignored", stacklevel=3)


def _is_path(name: str) -> bool:
    return name.startswith((".", "~", os.sep)) or "/" in name or os.sep in name


def local_model_path(name: Any, config_path: Path | None = None) -> Any:
    """`model:` as an absolute path when it names a local directory or file (relative to the working
    directory; for a config saved before run formats, failing that, to a directory above the config file,
    where that run was started from); anything else (an alias, a hub id, a missing path) as it is. A bare
    name (no slash) stays as written: it may be an alias."""
    if not isinstance(name, str) or not name or not _is_path(name):
        return name
    try:
        path = Path(name).expanduser()
        if path.exists():
            return os.path.abspath(path)
        if config_path is not None and not path.is_absolute():
            for base in Path(os.path.abspath(config_path)).parents:
                if (base / path).exists():
                    return os.path.normpath(base / path)
    except (OSError, ValueError, RuntimeError):  # a NUL byte, a name too long, ~nosuchuser: not a local path
        pass
    return name


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {exc.start})") from None
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or "syntax error"  # not str(exc): it quotes the file's text
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    except RecursionError:  # PyYAML parses nested collections recursively
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys (model, stage, method, data, ...)")
    if os.environ.get(SECRETS_ENV):  # a parent (compare) wrote this file masked and passed the secrets here
        try:
            restore_secrets(raw, json.loads(os.environ[SECRETS_ENV]))
        except ValueError:
            raise ConfigError(f"environment variable {SECRETS_ENV} is not valid JSON") from None
    raw = apply_overrides(raw, overrides or [])
    try:
        lines = _line_map(node) if node is not None else {}
    except RecursionError:
        raise ConfigError(f"{path}: a value is nested too deeply (or refers to itself through a YAML alias)") from None
    saved_run = _check_header(raw, str(path))
    _retire_keys(raw, str(path), lines)
    if "model" in raw:
        raw["model"] = local_model_path(raw["model"], None if saved_run else path)
    if isinstance(raw.get("method"), dict):
        raw["method"].setdefault("name", "lora")  # the default method, as when `method:` is absent
    try:
        return Config.model_validate(raw)
    except RecursionError:
        raise ConfigError(f"{path}: a value is nested too deeply (or refers to itself through a YAML alias)") from None
    except ValidationError as exc:
        method = raw.get("method", {}).get("name") if isinstance(raw.get("method"), dict) else None
        raise ConfigError(_explain(exc, str(path), lines, method)) from None


REDACTED_HEADER = ("# Secrets redacted: values of keys named like token/key/secret/password and credentials in URLs\n"
                   "# are '***'; give them again (key=value overrides) to reuse this config with them.\n")


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (saved as output_dir/config.yaml) after the run header, a local model
    path made absolute, secrets masked; it still loads."""
    raw = {**run_header(), **cfg.model_dump(mode="json")}
    raw["model"] = local_model_path(raw["model"])
    for key in STAGE_BLOCKS.values():  # the blocks of other stages are absent, not null
        if raw.get(key) is None:
            raw.pop(key, None)
    redacted = redact_config(raw)
    header = REDACTED_HEADER if count_redactions(raw, redacted) else ""
    return header + yaml.safe_dump(redacted, sort_keys=False)
