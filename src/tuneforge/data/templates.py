"""Prompt templates and the one function that builds labels.

The tokenizer's chat template is used when it has one; otherwise the alpaca template below is
installed as the tokenizer's chat template, so training, the saved run and inference render alike.
Labels: only assistant turns are supervised, each through its end-of-turn token (EOS), never the
whitespace after it. Masking is by position, so EOS is labelled even when pad == eos.

Control tokens (`<|im_start|>`, `<|im_end|>`, BOS/EOS, ...) are special only where the template writes them:
inside a message's content (or a raw text) they are tokenized as plain text, so a user turn can never close
itself and open a forged system turn. Contents are escaped before rendering (each control token becomes a
placeholder), the rendered text is tokenized as before, and each placeholder is tokenized on its own with
`split_special_tokens=True`. A conversation without control tokens in its contents tokenizes exactly as
it did without this step. `special_tokens_in_text=True` (config `data.special_tokens_in_text`) keeps the old
behaviour for training data that is meant to carry them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from tuneforge.data.formats import Messages
from tuneforge.data.tools import CHATML_TOOLS_TEMPLATE, require_tool_template
from tuneforge.errors import DataError

IGNORE = -100

ALPACA_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}"
    "{% else %}{{ 'Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\\n\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
)


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # same length; IGNORE where not supervised (unshifted, as in transformers)

    @property
    def n_supervised(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def apply_template(tokenizer, template: str) -> str:
    """Make sure the tokenizer has the chat template we train with; return its name ('chat', 'alpaca' or
    'chatml_tools': Hermes-style tool calls in ChatML, for models whose own template cannot render tools)."""
    if template == "chatml_tools":
        tokenizer.chat_template = CHATML_TOOLS_TEMPLATE
        return "chatml_tools"
    if template == "chat" and not tokenizer.chat_template:
        raise DataError("data.template is 'chat' but the tokenizer has no chat template; use 'alpaca' or 'auto'")
    if template == "alpaca" or (template == "auto" and not tokenizer.chat_template):
        tokenizer.chat_template = ALPACA_TEMPLATE
        return "alpaca"
    return "chat"


def render(tokenizer, messages: Messages, add_generation_prompt: bool = False, tools: list | None = None) -> str:
    extra = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **extra)


def uses_tools(messages: Messages, tools: list | None) -> bool:
    return bool(tools) or any(m.get("tool_calls") or m["role"] == "tool" for m in messages)


# -- control tokens in text --------------------------------------------------------------------------------
_OPEN, _CLOSE = "\ue000", "\ue001"  # Unicode private-use characters: no template writes them
_PLACEHOLDER = re.compile(f"{_OPEN}(\\d+){_CLOSE}")
# What control tokens look like when no tokenizer is at hand (data check without --model): ChatML / Llama 3 /
# Phi `<|...|>`, SentencePiece `<s>` `</s>`, Gemma `<start_of_turn>` `<end_of_turn>`.
_CONTROL_SHAPES = re.compile(r"<\|[^|<>\s]{1,40}\|>|</?s>|<(?:start|end)_of_turn>")


def control_tokens(tokenizer) -> list[str]:
    """The strings this tokenizer turns into special tokens (the template's control tokens, BOS/EOS, ...),
    longest first."""
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    tokens = {t.content for t in decoder.values() if getattr(t, "special", False)}
    tokens.update(getattr(tokenizer, "all_special_tokens", None) or [])
    return sorted((t for t in tokens if isinstance(t, str) and t), key=lambda t: (-len(t), t))


def find_control_tokens(text: str, tokens: Iterable[str] | None = None) -> list[str]:
    """The distinct control tokens in `text`, in order of first appearance: `tokens` (a tokenizer's
    `control_tokens`), or without them the usual shapes (`<|...|>`, `<s>`, `</s>`, ...). Pure; `data check`
    reports rows where this is not empty."""
    if not isinstance(text, str) or not text:
        return []
    if tokens is None:
        pattern = _CONTROL_SHAPES
    else:
        tokens = sorted(set(tokens), key=len, reverse=True)
        if not tokens:
            return []
        pattern = re.compile("|".join(map(re.escape, tokens)))
    return list(dict.fromkeys(m.group(0) for m in pattern.finditer(text)))


def escape_messages(messages: Messages, tokens: Iterable[str]) -> tuple[Messages, list[str]]:
    """(messages with every control token of their contents replaced by a placeholder, the replaced strings).
    Render the escaped messages, then `encode(tokenizer, text, pieces)`."""
    pieces: list[str] = []
    tokens = [*sorted(set(tokens), key=len, reverse=True), _OPEN, _CLOSE]  # a stray placeholder char too
    pattern = re.compile("|".join(map(re.escape, tokens)))

    def hide(match: re.Match) -> str:
        pieces.append(match.group(0))
        return f"{_OPEN}{len(pieces) - 1}{_CLOSE}"

    out = [{**m, "content": pattern.sub(hide, m["content"])} if isinstance(m.get("content"), str) else m
           for m in messages]
    out = [{**m, "tool_calls": _hide_strings(m["tool_calls"], pattern, hide)} if m.get("tool_calls") else m
           for m in out]
    return out, pieces


def _hide_strings(value, pattern: re.Pattern, hide):
    """`value` (tool calls, a function list) with control tokens in every string, keys included, hidden."""
    if isinstance(value, str):
        return pattern.sub(hide, value)
    if isinstance(value, dict):
        return {_hide_strings(k, pattern, hide): _hide_strings(v, pattern, hide) for k, v in value.items()}
    if isinstance(value, list):
        return [_hide_strings(v, pattern, hide) for v in value]
    return value


def encode(tokenizer, text: str, pieces: list[str] | tuple[str, ...] = ()) -> list[int]:
    """Token ids of rendered text: the template's own control tokens special, each escaped piece (see
    `escape_messages`) plain text."""
    if not text:
        return []
    if not pieces:
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    ids: list[int] = []
    for k, part in enumerate(_PLACEHOLDER.split(text)):
        if k % 2:
            ids += tokenizer(pieces[int(part)], add_special_tokens=False, split_special_tokens=True)["input_ids"]
        elif part:
            ids += tokenizer(part, add_special_tokens=False)["input_ids"]
    return ids


def encode_text(tokenizer, text: str, special_tokens_in_text: bool = False) -> list[int]:
    """Token ids of raw text (a pretrain document, a completion prompt): control tokens in it are plain text
    unless `special_tokens_in_text`."""
    if not text:
        return []
    split = not special_tokens_in_text and bool(find_control_tokens(text, control_tokens(tokenizer)))
    return tokenizer(text, add_special_tokens=False, split_special_tokens=split)["input_ids"]


def _escaped(tokenizer, messages: Messages, special_tokens_in_text: bool,
             tools: list | None = None) -> tuple[Messages, list | None, list[str]]:
    if special_tokens_in_text:
        return list(messages), tools, []
    # the tools go through as a fake message's tool_calls, so their placeholders number after the messages'
    escaped, pieces = escape_messages([*messages, {"role": "tools", "tool_calls": tools}], control_tokens(tokenizer))
    return escaped[:-1], escaped[-1].get("tool_calls"), pieces


def _segments(tokenizer, messages: Messages, where: str, tools: list | None = None) -> list[tuple[str, bool]]:
    """Split the rendered conversation into (text, supervised) pieces, one per assistant turn boundary. Tool
    results and the function list fall in the unsupervised pieces; an assistant's calls are supervised."""
    if uses_tools(messages, tools):
        require_tool_template(tokenizer, where)
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], add_generation_prompt=True, tools=tools)
        through = render(tokenizer, messages[: i + 1], tools=tools)
        if not (prompt.startswith(done) and through.startswith(prompt)):
            raise DataError(
                f"{where}: the chat template does not render conversations prefix by prefix, so assistant "
                "turns cannot be located; use data.template=alpaca or a template without history rewriting"
            )
        pieces += [(prompt[len(done) :], False), (through[len(prompt) :], True)]
        done = through
    full = render(tokenizer, messages, tools=tools)
    if not full.startswith(done):
        raise DataError(f"{where}: the chat template renders the full conversation differently from its prefixes")
    if full[len(done) :]:
        pieces.append((full[len(done) :], False))
    return pieces


def build_sft_example(tokenizer, messages: Messages, where: str = "<sample>",
                      special_tokens_in_text: bool = False, tools: list | None = None) -> Example:
    """Tokenize each piece on its own (the prompt tokenizes exactly as at inference) and label by position.
    Control tokens inside contents are plain text unless `special_tokens_in_text`. `tools`: the row's
    function list (data.tools), rendered by the template; a template that cannot render tools is a DataError."""
    eos = tokenizer.eos_token_id
    input_ids: list[int] = []
    labels: list[int] = []
    messages, tools, pieces = _escaped(tokenizer, messages, special_tokens_in_text, tools)
    for text, supervised in _segments(tokenizer, messages, where, tools):
        ids = encode(tokenizer, text, pieces)
        if supervised:
            # Supervise through the last EOS of the turn; what the template puts after it ("\n") is not
            # something the model must generate. A template without EOS gets one appended after the turn.
            cut = max((k + 1 for k, t in enumerate(ids) if t == eos), default=None)
            if cut is None:
                ids, cut = [*ids, eos], len(ids) + 1
            input_ids += ids
            labels += ids[:cut] + [IGNORE] * (len(ids) - cut)
        else:
            input_ids += ids
            labels += [IGNORE] * len(ids)
    return Example(input_ids, labels)


def build_prompt_ids(tokenizer, messages: Messages, where: str = "request",
                     special_tokens_in_text: bool = False, tools: list | None = None) -> list[int]:
    """Token ids of the prompt for the next assistant turn, tokenized as training tokenized the same
    conversation: the history through the last assistant turn by `build_sft_example`, the rest in one piece.
    (Tokenizing the whole text at once can differ: SmolLM2 with the alpaca template merges the blank line
    after EOS.) Control tokens inside contents are plain text unless `special_tokens_in_text`."""
    if uses_tools(messages, tools):
        require_tool_template(tokenizer, where)
    escaped, escaped_tools, pieces = _escaped(tokenizer, messages, special_tokens_in_text, tools)
    text = render(tokenizer, escaped, add_generation_prompt=True, tools=escaped_tools)
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    if last < 0:
        return encode(tokenizer, text, pieces)
    done = render(tokenizer, escaped[: last + 1], tools=escaped_tools)
    if not text.startswith(done):
        raise DataError(f"{where}: the chat template renders this conversation differently from its history")
    history = build_sft_example(tokenizer, messages[: last + 1], where, special_tokens_in_text, tools)
    return history.input_ids + encode(tokenizer, text[len(done) :], pieces)


def build_pretrain_examples(tokenizer, text: str, max_length: int, split: bool,
                            special_tokens_in_text: bool = False) -> list[Example]:
    """Raw text + EOS, every token supervised; with `split`, long documents become max_length chunks.
    Control tokens in the text are plain text unless `special_tokens_in_text`."""
    ids = encode_text(tokenizer, text, special_tokens_in_text) + [tokenizer.eos_token_id]
    bos = tokenizer.bos_token_id
    if bos is not None and getattr(tokenizer, "add_bos_token", False):
        ids = [bos, *ids]
    if not split:
        return [Example(ids, list(ids))]
    return [Example(ids[i : i + max_length], ids[i : i + max_length]) for i in range(0, len(ids), max_length)]
