"""The OpenAI wire format the server speaks: request bodies (pydantic), response bodies, streamed chunks
and errors ({"error": {"message", "type", "param", "code"}}).

    body = ChatRequest.model_validate(json); chunk = chat_chunk(rid, model, {"content": "hi"})
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tuneforge.data.tools import parse_tool_calls
from tuneforge.inference.engine import RequestError, Result

# Fields clients may send that would change the answer in ways we do not implement: refused, never ignored.
# `tools` and `tool_choice` ("auto" / "none") are ChatRequest fields (data.tools: rendered by the chat template,
# calls parsed back from `<tool_call>` blocks).
UNSUPPORTED = ("stop", "functions", "function_call", "logprobs", "top_logprobs", "logit_bias",
               "response_format", "echo", "suffix", "best_of", "presence_penalty", "frequency_penalty")


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | list[TextPart] | None = None  # None: an assistant turn that only calls tools
    tool_calls: list[dict] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    def to_dict(self) -> dict:
        """The message as the chat template takes it; call arguments stay as sent (the engine parses them)."""
        out: dict = {"role": self.role, "content": self.text()}
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        if self.role == "tool":
            out.update({k: v for k, v in (("tool_call_id", self.tool_call_id), ("name", self.name)) if v})
        return out


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown fields pass; those in UNSUPPORTED are refused
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=1)
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    def check_supported(self) -> None:
        for key, value in (self.model_extra or {}).items():
            if key in UNSUPPORTED and value not in (None, False, 0, "", [], {}):
                raise RequestError(f"{key!r} is not supported by this server", param=key, code="unsupported")

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None

    def to_messages(self) -> list[dict]:
        return [m.to_dict() for m in self.messages]

    def tool_list(self) -> list[dict] | None:
        """The tools the model is shown: none for tool_choice "none"; forcing a call is not implemented."""
        if self.tool_choice not in (None, "auto", "none"):
            raise RequestError("tool_choice: only 'auto' and 'none' are supported", param="tool_choice",
                               code="unsupported")
        return self.tools if self.tools and self.tool_choice != "none" else None


class CompletionRequest(_Request):
    prompt: str | list[str]

    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise RequestError("prompt: exactly one prompt per request is supported", param="prompt")
        return self.prompt[0]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(result: Result) -> dict[str, int]:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


def _envelope(rid: str, obj: str, model: str, choices: list[dict], **extra: Any) -> dict:
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": choices, **extra}


def assistant_message(result: Result, tools: bool) -> tuple[dict, str]:
    """(message, finish_reason): with tools, `<tool_call>` blocks in the text become `tool_calls`."""
    content, calls = parse_tool_calls(result.text) if tools else (result.text, [])
    if not calls:
        return {"role": "assistant", "content": result.text}, result.finish_reason
    calls = [{"id": new_id("call"), **c} for c in calls]
    reason = "tool_calls" if result.finish_reason == "stop" else result.finish_reason
    return {"role": "assistant", "content": content or None, "tool_calls": calls}, reason


def chat_response(rid: str, model: str, result: Result, tools: bool = False) -> dict:
    message, reason = assistant_message(result, tools)
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": reason}
    return _envelope(rid, "chat.completion", model, [choice], usage=usage(result))


def tool_chunks(rid: str, model: str, result: Result) -> list[dict]:
    """A streamed reply to a request with tools, sent once generation ends (calls are only known then): the
    content and the calls in one delta, then the finish reason."""
    message, reason = assistant_message(result, True)
    delta = {"content": message["content"]}
    if message.get("tool_calls"):
        delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(message["tool_calls"])]
    return [chat_chunk(rid, model, delta), chat_chunk(rid, model, {}, reason)]


def completion_response(rid: str, model: str, result: Result) -> dict:
    choice = {"index": 0, "text": result.text, "logprobs": None, "finish_reason": result.finish_reason}
    return _envelope(rid, "text_completion", model, [choice], usage=usage(result))


def chat_chunk(rid: str, model: str, delta: dict, finish_reason: str | None = None) -> dict:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return _envelope(rid, "chat.completion.chunk", model, [choice])


def completion_chunk(rid: str, model: str, text: str, finish_reason: str | None = None) -> dict:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    return _envelope(rid, "text_completion", model, [choice])


def usage_chunk(rid: str, obj: str, model: str, result: Result) -> dict:
    """OpenAI's stream_options.include_usage: a last chunk with no choices and the counts."""
    return _envelope(rid, obj, model, [], usage=usage(result))


def sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
