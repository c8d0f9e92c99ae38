"""Find and replace personal data and secrets in text: emails, phone numbers, IPv4/IPv6 addresses,
credit-card-like numbers (Luhn-checked) and API keys / tokens. Each match becomes a placeholder such
as `[EMAIL]`, which no pattern matches again, so scrubbing is idempotent.

    text, counts = scrub("mail me at ann@example.com")   # "mail me at [EMAIL]", {"email": 1}

Regular expressions rather than a library: the candidates are few and well-shaped, and phone
detection here must not assume a country (libphonenumber needs a default region). Phone numbers
need separators or a leading +, so dates, versions and plain numbers are left alone.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable

PLACEHOLDERS = {"secret": "[SECRET]", "email": "[EMAIL]", "credit_card": "[CREDIT_CARD]",
                "ip": "[IP]", "phone": "[PHONE]"}

_SECRET = re.compile(
    r"\b(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"  # OpenAI / Anthropic style
    r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,}"  # GitHub
    r"|hf_[A-Za-z0-9]{30,}"  # Hugging Face
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key id
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"  # Slack
    r"|AIza[0-9A-Za-z_-]{35})"  # Google API key
    r"|\bBearer\s+[A-Za-z0-9._~+/=-]{16,}"
)
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_CARD = re.compile(r"(?<![\w.-])\d(?:[ -]?\d){12,18}(?![\w.-]|-\d)")
_IPV4 = re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?<=:):)(?![\w:])")
_PHONE = re.compile(
    r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}(?![\w])"  # international: +44 20 7946 0958
    r"|(?:\(\d{3}\)\s?|(?<![\w.+-])\d{3}[ .-])\d{3}[ .-]\d{4}(?![\w-])"  # (555) 123-4567, 555.123.4567
)


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _is_card(m: re.Match) -> bool:
    digits = re.sub(r"\D", "", m.group())
    return 13 <= len(digits) <= 19 and len(set(digits)) > 1 and _luhn(digits)


def _is_ipv4(m: re.Match) -> bool:
    try:
        ipaddress.IPv4Address(m.group())
    except ValueError:
        return False
    return True


def _is_ipv6(m: re.Match) -> bool:
    text = m.group()
    if sum(c.isalnum() for c in text) < 3:  # "::" or "a::b" in code is not an address worth scrubbing
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _is_phone(m: re.Match) -> bool:
    return 8 <= sum(c.isdigit() for c in m.group()) <= 15


# Order matters: tokens contain digit runs, and an IPv6 address is tried before phones. The cheap
# `needs` test skips a pattern on text that cannot match it (most text has no "@", no digit, no ":").
_DIGIT = re.compile(r"\d")
_SECRET_HINT = re.compile(r"sk-|gh[pousr]_|github_pat_|hf_|AKIA|ASIA|xox|AIza|Bearer")
PATTERNS: list[tuple[str, re.Pattern, Callable[[re.Match], bool] | None, Callable[[str], object]]] = [
    ("secret", _SECRET, None, _SECRET_HINT.search),
    ("email", _EMAIL, None, lambda t: "@" in t),
    ("credit_card", _CARD, _is_card, _DIGIT.search),
    ("ip", _IPV6, _is_ipv6, lambda t: t.count(":") >= 2),
    ("ip", _IPV4, _is_ipv4, lambda t: "." in t and _DIGIT.search(t)),
    ("phone", _PHONE, _is_phone, _DIGIT.search),
]


def scrub(text: str, kinds: set[str] | None = None) -> tuple[str, Counter]:
    """(text with placeholders, counts per kind); `kinds` limits which kinds are scrubbed."""
    counts: Counter = Counter()
    for kind, pattern, accept, needs in PATTERNS:
        if (kinds is not None and kind not in kinds) or not needs(text):
            continue

        def replace(m: re.Match, kind: str = kind, accept=accept) -> str:
            if accept is not None and not accept(m):
                return m.group()
            counts[kind] += 1
            return PLACEHOLDERS[kind]

        text = pattern.sub(replace, text)
    return text, counts
