"""Keep secrets (tokens, API keys, passwords) out of saved configs, reports, logs and error messages.

    text = redact_text("https://user:hunter2@host/x")      # -> "https://user:***@host/x"
    raw = redact_config(cfg.model_dump(mode="json"))      # secret-named keys' values -> "***"

A key is secret-named when one of its words (split on `_ - .` and camelCase) is token, key, secret,
password, ... (`api_key`, `hf_token`, `mlflow_tracking_password`, `apiKey`), but not plural counts such as
`max_new_tokens`. Text is scrubbed of URL credentials (`scheme://user:PASSWORD@host`, `?token=...`),
well-known token shapes (hf_..., sk-..., ghp_...) and the values of secret-named environment variables.
"""

from __future__ import annotations

import os
import re
from typing import Any

REDACTED = "***"
SECRET_WORDS = frozenset({"token", "key", "secret", "password", "passwd", "pwd", "apikey", "credential",
                          "credentials", "auth", "authorization", "bearer", "cookie", "passphrase"})
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
# scheme://user:password@host (password redacted) or scheme://user@host (a bare user is often a token)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^\s/@:?#]*)(?::(?P<pw>[^\s/@?#]*))?@")
_QUERY_SECRET = re.compile(r"(?P<name>[?&;][^\s=&#]*?(?:token|key|secret|password|passwd|signature|sig)[^\s=&#]*=)"
                           r"(?P<value>[^\s&#'\"]+)", re.IGNORECASE)
# Shapes of common credentials: Hugging Face, OpenAI, GitHub, Slack, AWS access key ids, W&B (40 hex).
_TOKEN_SHAPES = re.compile(r"\b(?:hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{16,}|gh[pousr]_[A-Za-z0-9]{20,}|"
                           r"xox[abpr]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16})\b")
_MIN_ENV_SECRET = 6  # shorter values would redact ordinary words
# The shell's working directories: "pwd" is a secret word in a config key, but $PWD is every path under it
_NOT_SECRET_ENV = frozenset({"PWD", "OLDPWD"})


def key_words(name: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(str(name))]


def is_secret_key(name: Any) -> bool:
    """`api_key`, `HF_TOKEN`, `mlflow_tracking_password`, `apiKey` -> True; `max_new_tokens`, `keys` -> False."""
    if not isinstance(name, str):
        return False
    words = key_words(name)
    return any(w in SECRET_WORDS for w in words) or "apikey" in name.lower().replace("_", "").replace("-", "")


def env_secrets(environ: dict[str, str] | None = None) -> list[str]:
    """Values of secret-named environment variables (HF_TOKEN, OPENAI_API_KEY, ...), longest first."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items()
              if k not in _NOT_SECRET_ENV and is_secret_key(k) and len(v.strip()) >= _MIN_ENV_SECRET}
    return sorted(values, key=len, reverse=True)


def _url_sub(m: re.Match) -> str:
    if m.group("pw") is not None:
        return f"{m.group('scheme')}{m.group('user')}:{REDACTED}@"
    return f"{m.group('scheme')}{REDACTED}@" if m.group("user") else m.group(0)


def redact_text(text: str) -> str:
    """`text` with URL credentials, secret query parameters, token-shaped words and environment secrets masked."""
    if not isinstance(text, str) or not text:
        return text
    text = _URL_CREDENTIALS.sub(_url_sub, text)
    text = _QUERY_SECRET.sub(lambda m: m.group("name") + REDACTED, text)
    text = _TOKEN_SHAPES.sub(REDACTED, text)
    for value in env_secrets():
        text = text.replace(value, REDACTED)
    return text


_MAX_DEPTH = 64  # deeper (or self-referencing, e.g. a YAML alias loop) structures are cut to REDACTED


def _redact_all(value: Any, depth: int = 0) -> Any:
    """Everything under a secret-named key: strings masked, structure (and non-string scalars) kept."""
    if depth > _MAX_DEPTH:
        return REDACTED
    if isinstance(value, dict):
        return {k: _redact_all(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_all(v, depth + 1) for v in value]
    return REDACTED if isinstance(value, str) and value else value


def redact_config(value: Any, key: Any = None, depth: int = 0) -> Any:
    """A copy of a plain config structure (dicts, lists, scalars) with secret-named keys' string values
    replaced by `***` and every other string passed through `redact_text`."""
    if is_secret_key(key):
        return _redact_all(value, depth)
    if depth > _MAX_DEPTH:
        return REDACTED
    if isinstance(value, dict):
        return {k: redact_config(v, k, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_config(v, None, depth + 1) for v in value]
    return redact_text(value) if isinstance(value, str) else value


def count_redactions(before: Any, after: Any) -> int:
    """How many leaves `redact_config` changed (0: nothing secret found)."""
    if isinstance(before, dict) and isinstance(after, dict):
        return sum(count_redactions(before[k], after.get(k)) for k in before)
    if isinstance(before, list | tuple) and isinstance(after, list | tuple):
        return sum(count_redactions(b, a) for b, a in zip(before, after, strict=False))
    return int(before != after)


# A child process (`tuneforge compare` runs each method as `tuneforge train FILE`) gets its config file with
# secrets masked and the masked values here: [{"path": [...], "masked": "***", "value": "the secret"}, ...].
SECRETS_ENV = "TUNEFORGE_CONFIG_SECRETS"


def secret_leaves(raw: Any) -> list[dict[str, Any]]:
    """Every leaf of a plain config structure that `redact_config` masks: its path, masked form and value."""
    leaves: list[dict[str, Any]] = []

    def walk(before: Any, after: Any, path: list) -> None:
        if isinstance(before, dict) and isinstance(after, dict):
            for k in before:
                walk(before[k], after.get(k), [*path, k])
        elif isinstance(before, list | tuple) and isinstance(after, list | tuple):
            for i, (b, a) in enumerate(zip(before, after, strict=False)):
                walk(b, a, [*path, i])
        elif before != after:
            leaves.append({"path": path, "masked": after, "value": before})

    walk(raw, redact_config(raw), [])
    return leaves


def restore_secrets(raw: Any, leaves: list[dict[str, Any]]) -> int:
    """Put each leaf's value back where `raw` still holds its masked form (nothing else is changed); return
    how many were restored."""
    restored = 0
    for leaf in leaves if isinstance(leaves, list) else []:
        path = leaf.get("path") if isinstance(leaf, dict) else None
        if not isinstance(path, list) or not path:
            continue
        node = raw
        for part in path[:-1]:
            node = _child(node, part)
        last = path[-1]
        if _child(node, last, missing := object()) is not missing and node[last] == leaf.get("masked"):
            node[last] = leaf.get("value")
            restored += 1
    return restored


def _child(node: Any, part: Any, default: Any = None) -> Any:
    if isinstance(node, dict):
        return node.get(part, default)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return default
