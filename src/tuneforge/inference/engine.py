"""Inference on a finished run or a model, with the chat template and system prompt the run trained with.

Prompts are built and tokenized exactly as training built them (the same `render` and, for earlier turns,
the same per-segment tokenization as `build_sft_example`), so the model sees at inference the tokens it
was trained on. Control tokens a client writes into a message (`<|im_end|>`, `<|im_start|>system`) or a
completion prompt are plain text, never the template's special tokens: a request cannot forge a turn.
One generation at a time (a lock); greedy unless a temperature is given; bounded input and output; text is
streamed through a transformers streamer as it is decoded.

    engine = load_engine("runs/quickstart"); engine.generate(engine.chat_prompt_ids(messages), Params(64))
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

from tuneforge.data.fields import Issue
from tuneforge.data.formats import ROLES, Messages
from tuneforge.data.templates import apply_template, build_prompt_ids, encode_text, render
from tuneforge.data.tools import tool_messages
from tuneforge.errors import ModelError, UserError
from tuneforge.stage_info import STAGE_INFO, stage_info

DEFAULT_CONTEXT = 2048  # when the model config names no max_position_embeddings


class RequestError(UserError):
    """A request the engine refuses (too long, bad messages, bad parameters). HTTP status for the server."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


@dataclass(frozen=True)
class Params:
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None


@dataclass(frozen=True)
class Result:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS), "length" (max_new_tokens) or "cancelled"


class _Streamer(TextStreamer):
    """transformers' TextStreamer (word-boundary decoding), sending text to a callback and keeping the ids."""

    def __init__(self, tokenizer, on_text: Callable[[str], None] | None) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.on_text = on_text
        self.ids: list[int] = []
        self.parts: list[str] = []

    def put(self, value) -> None:
        if not self.next_tokens_are_prompt:
            self.ids += value.reshape(-1).tolist()
        super().put(value)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.parts.append(text)
            if self.on_text:
                self.on_text(text)


class _Cancel(StoppingCriteria):
    """A stopping criterion that ends generation when another thread sets the event (client went away)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool)


class Engine:
    def __init__(self, model, tokenizer, name: str, system_prompt: str | None = None, template: str | None = None,
                 max_new_tokens: int | None = None, max_input_tokens: int | None = None) -> None:
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.system_prompt, self.template = system_prompt, template
        context = getattr(getattr(model, "config", None), "max_position_embeddings", None) or DEFAULT_CONTEXT
        self.max_new_tokens = max_new_tokens or min(512, context // 4)
        self.max_input_tokens = max_input_tokens or max(1, context - self.max_new_tokens)
        eos = {tokenizer.eos_token_id, *_as_list(getattr(model.generation_config, "eos_token_id", None))}
        self.eos_ids = sorted(i for i in eos if i is not None)
        self.lock = threading.Lock()

    # -- prompts -------------------------------------------------------------------------------------------
    def with_system(self, messages: Messages) -> Messages:
        """The run's system prompt is prepended when the conversation has none (as `to_messages` did in training)."""
        if self.system_prompt and (not messages or messages[0]["role"] != "system"):
            return [{"role": "system", "content": self.system_prompt}, *messages]
        return list(messages)

    def chat_prompt(self, messages: Messages, tools: list | None = None) -> str:
        messages, tools = check_messages(messages, tools)
        return render(self.tokenizer, self.with_system(messages), add_generation_prompt=True, tools=tools)

    def chat_prompt_ids(self, messages: Messages, tools: list | None = None) -> list[int]:
        """Token ids of the prompt for the next assistant turn, tokenized piece by piece as in training
        (`build_prompt_ids`); control tokens inside the messages (and tools) are plain text, always. `tools`:
        OpenAI's function list, rendered by the chat template (a template that cannot is a RequestError)."""
        messages, tools = check_messages(messages, tools)
        try:
            return build_prompt_ids(self.tokenizer, self.with_system(messages), "request", tools=tools)
        except UserError as exc:
            raise RequestError(str(exc), param="messages") from None

    def text_prompt_ids(self, text: str) -> list[int]:
        """A raw completion prompt, tokenized with the tokenizer's own special tokens (e.g. BOS) as in pretrain;
        control tokens inside the text are plain text, as pretrain data is by default."""
        ids = encode_text(self.tokenizer, text)
        bos = self.tokenizer.bos_token_id
        if bos is not None and getattr(self.tokenizer, "add_bos_token", False) and ids[:1] != [bos]:
            ids = [bos, *ids]
        return ids

    # -- generation ----------------------------------------------------------------------------------------
    def check(self, prompt_ids: list[int], max_new_tokens: int, param: str = "messages") -> None:
        if not prompt_ids:
            raise RequestError("the prompt is empty", param=param)
        if len(prompt_ids) > self.max_input_tokens:
            raise RequestError(f"the input is {len(prompt_ids)} tokens; at most {self.max_input_tokens} are "
                               "accepted", param=param, code="context_length_exceeded")
        if not 1 <= max_new_tokens <= self.max_new_tokens:
            raise RequestError(f"max_tokens must be between 1 and {self.max_new_tokens}, got {max_new_tokens}",
                               param="max_tokens")

    @torch.no_grad()
    def generate(self, prompt_ids: list[int], params: Params, on_text: Callable[[str], None] | None = None,
                 cancel: threading.Event | None = None) -> Result:
        """Generate one reply; `on_text` receives each decoded piece as it is ready (pieces join to `text`)."""
        self.check(prompt_ids, params.max_new_tokens)
        cancel = cancel or threading.Event()
        streamer = _Streamer(self.tokenizer, on_text)
        sampling = {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p} \
            if params.temperature > 0 else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=next(self.model.parameters()).device)
        with self.lock:
            if params.seed is not None:
                torch.manual_seed(params.seed)
            self.model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=params.max_new_tokens,
                streamer=streamer, stopping_criteria=StoppingCriteriaList([_Cancel(cancel)]), use_cache=True,
                eos_token_id=self.eos_ids, pad_token_id=self.tokenizer.pad_token_id, **sampling,
            )
        ids = streamer.ids
        reason = "stop" if ids and ids[-1] in self.eos_ids else "cancelled" if cancel.is_set() else "length"
        return Result("".join(streamer.parts), len(prompt_ids), len(ids), reason)


def check_messages(messages: Messages, tools: list | None = None) -> tuple[Messages, list | None]:
    """OpenAI-style messages reduced to what a chat template takes: roles we train, string contents; with tools
    or tool turns, checked as tool rows are (data.tools: calls to known functions, arguments JSON objects, tool
    results after a call). Returns the (normalised) messages and tools."""
    if not messages:
        raise RequestError("messages must be a non-empty list", param="messages")
    if tools or any(m.get("role") == "tool" or m.get("tool_calls") for m in messages):
        issues: list[Issue] = []
        checked, checked_tools = tool_messages({"messages": messages, **({"tools": tools} if tools else {})},
                                               issues, need_assistant=False)
        if issues:
            param = "tools" if issues[0].kind == "bad_tools" else "messages"
            raise RequestError(issues[0].message, param=param)
        assert checked is not None
        if checked[-1]["role"] == "assistant":
            raise RequestError("the last message must not be the assistant's: there is nothing to answer",
                               param="messages")
        return checked, checked_tools
    for i, m in enumerate(messages):
        if m.get("role") not in ROLES:
            raise RequestError(f"messages[{i}].role must be one of {sorted(ROLES)}, got {m.get('role')!r}",
                               param=f"messages[{i}].role")
        if not isinstance(m.get("content"), str):
            raise RequestError(f"messages[{i}].content must be a string", param=f"messages[{i}].content")
        if m["role"] == "system" and i != 0:
            raise RequestError(f"messages[{i}]: a system message may only come first", param=f"messages[{i}]")
    if messages[-1]["role"] == "assistant":
        raise RequestError("the last message must not be the assistant's: there is nothing to answer",
                           param="messages")
    return messages, None


def _as_list(value) -> list:
    return [] if value is None else list(value) if isinstance(value, list | tuple) else [value]


def _saved_template(path: Path) -> dict:
    """template.json of a run, or of the run a `tuneforge merge` directory came from (merge.json names it)."""
    if (path / "template.json").is_file():
        return json.loads((path / "template.json").read_text())
    if (path / "merge.json").is_file():
        run = Path(json.loads((path / "merge.json").read_text()).get("run", ""))
        if (run / "template.json").is_file():
            return json.loads((run / "template.json").read_text())
    return {}


NOT_GENERATING = {"classifier": "predicts labels (use `tuneforge predict`)",
                  "scorer": "scores texts with one reward (name it in a ppo / grpo config's rewards)"}


def check_generates(where: Path, stage: str) -> None:
    """Refuse, before anything loads, a run whose model makes no text (a classifier, a reward scorer)."""
    info = stage_info(stage)
    if not info.generates:
        causal = ", ".join(name for name, i in STAGE_INFO.items() if i.generates)
        raise ModelError(f"{where}: a {stage} run {NOT_GENERATING[info.model_kind]}, it does not generate text; "
                         f"chat, serve and eval generation need a run of {causal}")


def load_engine(source: str | Path, system_prompt: str | None = None, max_new_tokens: int | None = None,
                max_input_tokens: int | None = None, trust_remote_code: bool = False) -> Engine:
    """A run directory (adapter, full or freeze; its saved tokenizer carries the template), a merged / HF
    directory, or a model alias / hub id. `system_prompt` overrides the saved one ("" for none)."""
    from tuneforge.models import load_model, load_tokenizer
    from tuneforge.runs import load_run, run_config

    path = Path(source).expanduser()
    if (path / "config.yaml").is_file():
        check_generates(path, run_config(path).stage)
        model, tokenizer, _ = load_run(path)
        name = path.resolve().name
    else:
        if (path / "merge.json").is_file():  # a merged run: its stage is the run's
            run = Path(json.loads((path / "merge.json").read_text()).get("run", ""))
            if (run / "config.yaml").is_file():
                check_generates(path, run_config(run).stage)
        model = load_model(str(source), trust_remote_code)
        tokenizer = load_tokenizer(str(source), trust_remote_code)
        name = path.resolve().name if path.is_dir() else str(source)
    saved = _saved_template(path) if path.is_dir() else {}
    template = saved.get("template")
    if not tokenizer.chat_template:  # what training's data.template=auto does for such a tokenizer
        template = apply_template(tokenizer, "auto")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    system = saved.get("system_prompt") if system_prompt is None else (system_prompt or None)
    return Engine(model, tokenizer, name, system, template, max_new_tokens, max_input_tokens)
