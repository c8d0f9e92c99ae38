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

from tuneforge.inference.engine import RequestError, Result

# Fields clients may send that would change the answer in ways we do not implement: refused, never ignored.
UNSUPPORTED = ("stop", "tools", "functions", "tool_choice", "logprobs", "top_logprobs", "logit_bias",
               "response_format", "echo", "suffix", "best_of", "presence_penalty", "frequency_penalty")


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")  # e.g. "name"
    role: str
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


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

    def to_messages(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]


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


def chat_response(rid: str, model: str, result: Result) -> dict:
    choice = {"index": 0, "message": {"role": "assistant", "content": result.text}, "logprobs": None,
              "finish_reason": result.finish_reason}
    return _envelope(rid, "chat.completion", model, [choice], usage=usage(result))


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
