"""OpenAI chat-completions wire format: request validation, response/chunk builders, error bodies.

Quorum's extension: every completion, and the first chunk of every stream, carries the routing
decision in a top-level `quorum` field (`{"routing": RoutingDecision, "request_id": ...}`);
the official `openai` client keeps unknown fields, so `completion.quorum` (or
`completion.model_extra["quorum"]`) reads it. The same facts travel in `x-quorum-*` headers.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from experts.errors import InvalidRequestError, QuorumError
from experts.stream import Delta

log = logging.getLogger(__name__)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_call_id, ... are accepted and ignored
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The fields Quorum acts on; other OpenAI fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    n: Annotated[int, Field(ge=1)] = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError(f"n={n}: Quorum returns one choice per request; send n=1")
        return n

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop
        if stops is not None and len(stops) > 4:
            raise ValueError(f"stop has {len(stops)} sequences; at most 4 are allowed")
        return stops

    def last_user_text(self) -> str:
        """The text the skill classifier reads: the last user turn (else the last message)."""
        for message in reversed(self.messages):
            if message.role == "user":
                return message.text()
        return self.messages[-1].text()

    def plain_messages(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]

    def token_limit(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default


def parse_chat_request(body: bytes, max_messages: int) -> ChatCompletionRequest:
    """Bytes → validated request, or an InvalidRequestError that names the field and the fix."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(
            f"the request body is not valid JSON ({exc}); send a JSON object"
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequestError(
            f"the request body must be a JSON object, got {type(data).__name__}"
        )
    try:
        request = ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "is required"
        elif err["type"] == "too_short" and param == "messages":
            msg = "must contain at least one message"
        raise InvalidRequestError(
            f"'{param}': {msg} (got {err.get('input')!r:.100})", param=param.split(".")[0]
        ) from None
    if len(request.messages) > max_messages:
        raise InvalidRequestError(
            f"'messages' has {len(request.messages)} entries; at most {max_messages} are allowed",
            param="messages",
        )
    return request


def completion(
    request_id: str, model: str, text: str, finish_reason: str | None, usage: dict, extension: dict
) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage,
        "quorum": extension,
    }


def chunk(
    request_id: str,
    model: str,
    created: int,
    delta: dict[str, Any] | None,
    finish_reason: str | None = None,
    usage: dict | None = None,
    extension: dict | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if usage is not None:
        body["usage"] = usage
    if extension is not None:
        body["quorum"] = extension
    return body


def sse(payload: dict[str, Any] | str) -> bytes:
    """One Server-Sent Event, as OpenAI frames them: `data: <json>\\n\\n`."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def error_response(exc: QuorumError) -> JSONResponse:
    """The one way an error reaches a client: `exc`'s status and OpenAI's
    `{"error": {message, type, param, code}}`, with its headers (`Retry-After`, ...); a 401 also
    says how to authenticate. A Starlette response, so ASGI middleware can send it too."""
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status == 401:
        headers.setdefault("www-authenticate", "Bearer")
    return JSONResponse(exc.to_openai(), status_code=exc.status, headers=headers or None)


def internal_error(request_id: str) -> QuorumError:
    """What a client sees of an unexpected failure: a 500 naming the request; never a traceback."""
    return QuorumError(f"internal error while serving request {request_id}; see the server log")


async def sse_events(
    request_id: str,
    model: str,
    created: int,
    first: Delta,
    rest: AsyncIterator[Delta],
    extension: dict,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """An answer as OpenAI's SSE chunks: the role chunk (with the `quorum` extension), a chunk per
    delta, the final chunk (finish reason; for k > 1 the completed aggregation record), usage when
    asked, `[DONE]`. A failure after the first byte ends the stream with an error event."""
    yield sse(chunk(request_id, model, created, {"role": "assistant", "content": ""},
                    extension=extension))  # fmt: skip
    delta: Delta | None = first
    last = first
    try:
        while delta is not None:
            last = delta
            if delta.text:
                yield sse(chunk(request_id, model, created, {"content": delta.text}))
            delta = await anext(rest, None)
    except QuorumError as exc:
        log.warning("request %s: stream failed: %s", request_id, exc.message)
        yield sse(exc.to_openai())
        return
    except Exception:
        log.exception("request %s: stream failed", request_id)
        yield sse(internal_error(request_id).to_openai())
        return
    final = {"aggregation": extension["aggregation"]} if "aggregation" in extension else None
    yield sse(chunk(request_id, model, created, {}, last.finish_reason or "stop", extension=final))
    if include_usage:
        yield sse(chunk(request_id, model, created, None,
                        usage=usage(last.prompt_tokens, last.completion_tokens)))  # fmt: skip
    yield sse("[DONE]")
