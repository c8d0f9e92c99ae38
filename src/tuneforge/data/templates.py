"""Prompt templates and the one function that builds labels.

The tokenizer's chat template is used when it has one; otherwise the alpaca template below is
installed as the tokenizer's chat template, so training, the saved run and inference render alike.
Labels: only assistant turns are supervised, each through its end-of-turn token (EOS), never the
whitespace after it. Masking is by position, so EOS is labelled even when pad == eos.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneforge.data.formats import Messages
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
    """Make sure the tokenizer has the chat template we train with; return its name ('chat' or 'alpaca')."""
    if template == "chat" and not tokenizer.chat_template:
        raise DataError("data.template is 'chat' but the tokenizer has no chat template; use 'alpaca' or 'auto'")
    if template == "alpaca" or (template == "auto" and not tokenizer.chat_template):
        tokenizer.chat_template = ALPACA_TEMPLATE
        return "alpaca"
    return "chat"


def render(tokenizer, messages: Messages, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _segments(tokenizer, messages: Messages, where: str) -> list[tuple[str, bool]]:
    """Split the rendered conversation into (text, supervised) pieces, one per assistant turn boundary."""
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], add_generation_prompt=True)
        through = render(tokenizer, messages[: i + 1])
        if not (prompt.startswith(done) and through.startswith(prompt)):
            raise DataError(
                f"{where}: the chat template does not render conversations prefix by prefix, so assistant "
                "turns cannot be located; use data.template=alpaca or a template without history rewriting"
            )
        pieces += [(prompt[len(done) :], False), (through[len(prompt) :], True)]
        done = through
    full = render(tokenizer, messages)
    if not full.startswith(done):
        raise DataError(f"{where}: the chat template renders the full conversation differently from its prefixes")
    if full[len(done) :]:
        pieces.append((full[len(done) :], False))
    return pieces


def build_sft_example(tokenizer, messages: Messages, where: str = "<sample>") -> Example:
    """Tokenize each piece on its own (the prompt tokenizes exactly as at inference) and label by position."""
    eos = tokenizer.eos_token_id
    input_ids: list[int] = []
    labels: list[int] = []
    for text, supervised in _segments(tokenizer, messages, where):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
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


def build_pretrain_examples(tokenizer, text: str, max_length: int, split: bool) -> list[Example]:
    """Raw text + EOS, every token supervised; with `split`, long documents become max_length chunks."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    bos = tokenizer.bos_token_id
    if bos is not None and getattr(tokenizer, "add_bos_token", False):
        ids = [bos, *ids]
    if not split:
        return [Example(ids, list(ids))]
    return [Example(ids[i : i + max_length], ids[i : i + max_length]) for i in range(0, len(ids), max_length)]
