"""Load a YAML config, apply `dotted.key=value` overrides, validate, and explain every error by key and line.

    cfg = load_config("examples/quickstart.yaml", ["training.max_steps=10"])
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tuneforge.config.schema import METHOD_CONFIGS, STAGE_BLOCKS, Config
from tuneforge.errors import ConfigError
from tuneforge.secrets import count_redactions, is_secret_key, redact_config, redact_text


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
    raw = apply_overrides(raw, overrides or [])
    if isinstance(raw.get("method"), dict):
        raw["method"].setdefault("name", "lora")  # the default method, as when `method:` is absent
    try:
        lines = _line_map(node) if node is not None else {}
        return Config.model_validate(raw)
    except RecursionError:
        raise ConfigError(f"{path}: a value is nested too deeply (or refers to itself through a YAML alias)") from None
    except ValidationError as exc:
        method = raw.get("method", {}).get("name") if isinstance(raw.get("method"), dict) else None
        raise ConfigError(_explain(exc, str(path), lines, method)) from None


REDACTED_HEADER = ("# Secrets redacted: values of keys named like token/key/secret/password and credentials in URLs\n"
                   "# are '***'; give them again (key=value overrides) to reuse this config with them.\n")


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (saved as output_dir/config.yaml), secrets masked; it still loads."""
    raw = cfg.model_dump(mode="json")
    for key in STAGE_BLOCKS.values():  # the blocks of other stages are absent, not null
        if raw.get(key) is None:
            raw.pop(key, None)
    redacted = redact_config(raw)
    header = REDACTED_HEADER if count_redactions(raw, redacted) else ""
    return header + yaml.safe_dump(redacted, sort_keys=False)
