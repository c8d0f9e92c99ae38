"""Preference records as DPO examples: the prompt tokenized exactly as chat / serve tokenize it (the run's
chat template, or plain text for a tokenizer without one), each response through its end-of-turn EOS, over-length
pairs by training.overlength (the prompt is cut from the left, the responses from the right). Control tokens
written in the fields (`<|im_end|>`, ...) are plain text unless data.special_tokens_in_text, as in sft: the prompt
tokenizes as chat / serve tokenize the same conversation, and a row cannot forge a turn.

    examples, stats = load_dpo_examples(cfg, tokenizer, records)
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.schema import Config
from tuneforge.data.fields import Messages
from tuneforge.data.load import Record
from tuneforge.data.overlength import over_length
from tuneforge.data.preference import PairStats, build_examples, pair_field
from tuneforge.data.records import same_responses, to_conversation
from tuneforge.data.templates import control_tokens, encode, escape_messages, render
from tuneforge.errors import DataError


@dataclass(frozen=True)
class DpoExample:
    prompt_ids: list[int]
    chosen_ids: list[int]  # the response, through its EOS
    rejected_ids: list[int]

    def row(self) -> dict:
        return {"prompt_ids": self.prompt_ids, "chosen_ids": self.chosen_ids, "rejected_ids": self.rejected_ids}


def split_turns(prompt: str | Messages | None, chosen: str | Messages, rejected: str | Messages, where: str,
                system_prompt: str | None = None) -> tuple[Messages, dict, dict] | None:
    """(shared prompt messages, chosen turn, rejected turn) of a pair's fields; None when chosen == rejected
    (dropped). `system_prompt` (data.system_prompt) goes first unless the prompt has its own."""
    if same_responses(prompt, chosen, rejected):
        return None
    chosen, rejected = (to_conversation(prompt, r) for r in (chosen, rejected))
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise DataError(f"{where}: 'chosen' and 'rejected' must end with an assistant turn")
    if chosen[:-1] != rejected[:-1]:
        raise DataError(f"{where}: 'chosen' and 'rejected' must share every turn before their last one "
                        "(the prompt); only the final assistant turn may differ")
    messages = chosen[:-1]
    if system_prompt and not (messages and messages[0]["role"] == "system"):
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return messages, chosen[-1], rejected[-1]


def _response_ids(tokenizer, prompt_text: str, full_text: str, where: str, pieces: list[str]) -> list[int]:
    if not full_text.startswith(prompt_text):
        raise DataError(f"{where}: the chat template renders the prompt differently inside the conversation, so "
                        "the response cannot be located; use data.template=alpaca or another template")
    ids = encode(tokenizer, full_text[len(prompt_text):], pieces)
    eos = tokenizer.eos_token_id
    cut = max((k + 1 for k, t in enumerate(ids) if t == eos), default=None)
    return ids[:cut] if cut else [*ids, eos]  # a template without EOS gets one, as in sft labels


def build_dpo_example(tokenizer, messages: Messages, chosen: dict, rejected: dict, templated: bool, where: str,
                      special_tokens_in_text: bool = False) -> DpoExample:
    """The prompt's ids, then each response's ids (they follow the prompt's exactly): the texts are rendered
    with control tokens in the contents escaped, and each piece tokenized as sft tokenizes it."""
    if templated and not messages:  # a chat template cannot render an empty conversation's generation prompt
        raise DataError(f"{where}: dpo needs a prompt to answer with a chat template: a 'prompt' field, "
                        "turns before the last assistant turn of 'chosen' and 'rejected', or data.system_prompt")
    pieces: list[str] = []
    if not special_tokens_in_text:
        (*messages, chosen, rejected), pieces = escape_messages([*messages, chosen, rejected],
                                                                control_tokens(tokenizer))
    if templated:
        prompt_text = render(tokenizer, messages, add_generation_prompt=True)
        fulls = [render(tokenizer, [*messages, turn]) for turn in (chosen, rejected)]
    else:  # plain text as the reward stage joins it (data.preference.to_text)
        prompt_text = "".join(m["content"] + "\n\n" for m in messages)
        fulls = [prompt_text + turn["content"] for turn in (chosen, rejected)]
    prompt_ids = encode(tokenizer, prompt_text, pieces)
    if not prompt_ids:  # the first response token needs a context to be predicted from
        prompt_ids = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
    c, r = (_response_ids(tokenizer, prompt_text, full, where, pieces) for full in fulls)
    return DpoExample(prompt_ids, c, r)


def to_example(cfg: Config, tokenizer, record: Record, templated: bool) -> DpoExample | None:
    prompt = pair_field(record, "prompt", required=False)
    responses = [pair_field(record, key, required=True) for key in ("chosen", "rejected")]
    turns = split_turns(prompt, *responses, record.where, cfg.data.system_prompt)
    if turns is None:
        return None
    return build_dpo_example(tokenizer, *turns, templated, record.where, cfg.data.special_tokens_in_text)


def fit_responses(cfg: Config, where: str, prompt_ids: list[int], responses: list[list[int]], stats,
                  what: str) -> tuple[list[int], list[list[int]]] | None:
    """training.overlength for a prompt and its responses (dpo's two, kto's one), measured as the prompt plus
    the longest response: None when dropped; truncated, the prompt is cut from the left (its end sits next to
    the response), then the responses from the right. Counted in `stats` (truncated, dropped_overlength)."""
    longest = max(map(len, responses))
    action = over_length(len(prompt_ids) + longest, cfg, where, what)
    if action == "drop":
        stats.dropped_overlength += 1
        return None
    if action == "truncate":
        prompt_ids = prompt_ids[-max(1, cfg.training.max_length - longest):]
        room = cfg.training.max_length - len(prompt_ids)
        responses = [ids[:room] for ids in responses]
        stats.truncated += 1
    return prompt_ids, responses


def dpo_record(cfg: Config, tokenizer, record: Record, templated: bool, stats: PairStats) -> DpoExample | None:
    """One record's pair as dpo trains on it (None: dropped, counted in `stats`); the one builder of the
    in-memory and the cached (data.stage_cache) paths."""
    stats.records += 1
    example = to_example(cfg, tokenizer, record, templated)
    if example is None:
        stats.dropped_identical += 1
        return None
    fitted = fit_responses(cfg, record.where, example.prompt_ids, [example.chosen_ids, example.rejected_ids],
                           stats, "pair")
    if fitted is None:
        return None
    prompt_ids, (chosen_ids, rejected_ids) = fitted
    stats.lengths += [len(prompt_ids) + len(chosen_ids), len(prompt_ids) + len(rejected_ids)]
    return DpoExample(prompt_ids, chosen_ids, rejected_ids)


def load_dpo_examples(cfg: Config, tokenizer, records: list[Record]) -> tuple[list[DpoExample], PairStats]:
    stats = PairStats()
    return build_examples(cfg, tokenizer, records, dpo_record, stats, "preference pairs"), stats
