"""The new-run form, generated from the config schema (config/schema.py and its method / stage blocks), the stage
table (stage_info.STAGE_INFO) and the method table (methods.METHODS): no second list of options. A filled form
is a flat {dotted.key: text} mapping; `to_raw` turns it into the config mapping, `validate_form` checks it with
the code `tuneforge validate` runs (config.load.load_config + config.checks.check_config) and maps each error
line to its field.

    fields = form_schema()["sections"]; result = validate_form({"stage": "sft", ...}, runs_dir)
"""

from __future__ import annotations

import re
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel

from tuneforge.config.load import _parse_value, load_config
from tuneforge.config.schema import (
    METHOD_CONFIGS,
    STAGE_BLOCKS,
    Config,
    CpoConfig,
    DataConfig,
    DpoConfig,
    EvalConfig,
    GrpoConfig,
    KtoConfig,
    OrpoConfig,
    PpoConfig,
    SimpoConfig,
    TrainingConfig,
)
from tuneforge.errors import UserError
from tuneforge.stage_info import STAGE_INFO
from tuneforge.studio.discover import RESERVED

# What the form sets by default where the schema's default suits a long run but not a first try in a browser.
FORM_DEFAULTS = {"training.max_steps": "20", "training.progress": "false"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SECTIONS: tuple[tuple[str, type[BaseModel]], ...] = (
    ("data", DataConfig), ("training", TrainingConfig), ("eval", EvalConfig),
    ("dpo", DpoConfig), ("ppo", PpoConfig), ("grpo", GrpoConfig),
    ("kto", KtoConfig), ("orpo", OrpoConfig), ("simpo", SimpoConfig), ("cpo", CpoConfig),
)
TOP_KEYS = ("seed", "trust_remote_code")  # top-level keys the form offers beside model / stage / method


def _kind(annotation: Any) -> tuple[str, list[Any] | None, bool]:
    """(input kind: bool | int | float | str | choice | yaml, choices, optional) of one annotation."""
    optional = False
    if get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        optional = len(args) < len(get_args(annotation))
        if len(args) != 1:
            return "yaml", None, optional
        annotation = args[0]
    if get_origin(annotation) is Literal:
        return "choice", list(get_args(annotation)), optional
    kind = {bool: "bool", int: "int", float: "float", str: "str"}.get(annotation, "yaml")
    return kind, None, optional


def _field(key: str, info) -> dict[str, Any]:
    kind, choices, optional = _kind(info.annotation)
    default = None if info.is_required() else info.get_default(call_default_factory=True)
    bounds = {}
    for m in info.metadata:
        for name in ("ge", "gt", "le", "lt", "min_length"):
            if getattr(m, name, None) is not None:
                bounds[name] = getattr(m, name)
    return {"key": key, "kind": kind, "choices": choices, "optional": optional, "required": info.is_required(),
            "default": default, "help": info.description or "", "bounds": bounds}


def _fields(prefix: str, model: type[BaseModel], skip: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    return [_field(f"{prefix}{name}", info) for name, info in model.model_fields.items() if name not in skip]


def form_schema() -> dict[str, Any]:
    """Everything the page needs to draw the form: stages, methods (with the stages each supports and its
    options), and every other key by section, each with kind, default, bounds and help."""
    from tuneforge.methods import METHODS
    from tuneforge.models.hub import ALIASES

    methods = {name: {"stages": sorted(METHODS[name].stages), "default_lr": METHODS[name].default_lr,
                      "pairs_lr": METHODS[name].pairs_lr,
                      "mergeable": METHODS[name].mergeable, "saves_whole_model": METHODS[name].saves_whole_model,
                      "help": (cfg.__doc__ or "").strip(), "fields": _fields("method.", cfg, ("name",))}
               for name, cfg in METHOD_CONFIGS.items()}
    stages = {name: {"records": info.records, "model_kind": info.model_kind, "block": STAGE_BLOCKS.get(name),
                     "chainable": info.chainable, "generates": info.generates, "metrics": list(info.metrics)}
              for name, info in STAGE_INFO.items()}
    sections = [{"name": "top", "stage": None, "fields": [_field(k, Config.model_fields[k]) for k in TOP_KEYS]}]
    sections += [{"name": name, "stage": name if name in STAGE_BLOCKS.values() else None,
                  "fields": _fields(f"{name}.", model)} for name, model in SECTIONS]
    return {"stages": stages, "methods": methods, "default_method": "lora", "sections": sections,
            "aliases": sorted(ALIASES), "form_defaults": FORM_DEFAULTS}


def _field_kinds() -> dict[str, str]:
    kinds = {f["key"]: f["kind"] for s in form_schema()["sections"] for f in s["fields"]}
    for m in METHOD_CONFIGS.values():
        kinds.update({f["key"]: f["kind"] for f in _fields("method.", m)})
    return kinds


def to_raw(form: dict[str, str], output_dir: str) -> dict[str, Any]:
    """The config mapping a form describes: empty fields are left out (the schema's default applies); text
    fields stay text; other values are read as `key=value` overrides are (config.load._parse_value)."""
    kinds = _field_kinds()
    raw: dict[str, Any] = {}
    for key, text in form.items():
        if key == "name" or text is None or str(text).strip() == "":
            continue
        text = str(text).strip()
        kind = kinds.get(key, "str" if key in ("model", "stage", "method.name") else "yaml")
        value: Any = text if kind in ("str", "choice") else _parse_value(text)
        if kind == "choice" and text in ("true", "false"):
            value = text == "true"
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"key {key!r}: {part!r} is not a mapping")
        node[last] = value
    raw["output_dir"] = output_dir
    return raw


def to_yaml(raw: dict[str, Any]) -> str:
    return yaml.safe_dump(raw, sort_keys=False)


KEY_RE = re.compile(r"key '([\w.]+)'")


def field_errors(message: str) -> dict[str, str]:
    """A ConfigError's lines (`file:line: key 'training.batch_size': ...`) by dotted key; a line that names no
    key goes under "" (the form shows it at the top), a method x stage refusal under method.name."""
    errors: dict[str, str] = {}
    for line in message.splitlines():
        line = line.strip()
        if not line or line == "invalid config:":
            continue
        text = re.sub(r"^\S+?\.yaml(:\d+)?: ", "", line)
        found = KEY_RE.search(text)
        key = found.group(1) if found else ("method.name" if text.startswith("method ") else "")
        if key.startswith("method.") and key.split(".")[1] in METHOD_CONFIGS:  # method.lora.r -> method.r
            key = "method." + ".".join(key.split(".")[2:])
        errors[key] = f"{errors[key]}; {text}" if key in errors else text
    return errors


def validate_form(form: dict[str, str], runs_dir: Path, check_path=None) -> dict[str, Any]:
    """{"ok", "errors" {key: message}, "yaml", "command", "config"}: the form checked by load_config and
    check_config on the very YAML the run will be started with. `check_path(key, path)` (the studio's allowed
    roots) may refuse a path with a UserError."""
    from tuneforge.config.checks import check_config

    name = str(form.get("name") or "").strip()
    errors: dict[str, str] = {}
    if not NAME_RE.match(name) or name in RESERVED:
        errors["name"] = ("a run name: letters, digits, '.', '_' or '-' (at most 64), starting with a letter or digit"
                          f"; not {', '.join(sorted(RESERVED))} (the studio's uploads)")
    output_dir = str(runs_dir / (name or "unnamed"))
    try:
        raw = to_raw(form, output_dir)
    except UserError as exc:
        return {"ok": False, "errors": {"": str(exc)}, "yaml": "", "command": ""}
    text = to_yaml(raw)
    with tempfile.TemporaryDirectory(prefix="tuneforge-studio-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            check_config(load_config(path))
        except UserError as exc:
            errors.update(field_errors(str(exc)))
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    for key, value in (("model", raw.get("model")), ("data.train", data.get("train")), ("data.eval", data.get("eval"))):
        if check_path is not None and isinstance(value, str):
            try:
                check_path(key, value)
            except UserError as exc:
                errors[key] = str(exc)
    return {"ok": not errors, "errors": errors, "yaml": text, "config": raw,
            "command": f"tuneforge train {runs_dir / '.studio' / (name or 'unnamed') / 'config.yaml'}"}
