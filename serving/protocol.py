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
from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from experts.errors import InvalidRequestError, QuorumError
from serving.chat_params import (
    AllowedToolsChoice,
    NamedToolChoice,
    ResponseFormat,
    Tool,
    ToolCall,
    ToolChoice,
    check_logit_bias,
    refused_fields,
)

log = logging.getLogger(__name__)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    """One chat message. Fields OpenAI returns on an assistant message (`refusal`,
    `annotations`, ...) may come back in a conversation; they are accepted when empty."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, content: Any) -> Any:
        """Name what is wrong with content that is not text, instead of pydantic's union error."""
        if content is None or isinstance(content, str):
            return content
        if not isinstance(content, list):
            raise ValueError("content must be a string or a list of text parts")
        for i, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text":
                raise ValueError(f"content part {i} is of type {kind!r}; the experts read text "
                                 "only: send {'type': 'text', 'text': ...} parts")  # fmt: skip
            if not isinstance(part.get("text"), str):
                raise ValueError(f"content part {i} (text) needs a string 'text'")
        return content

    @model_validator(mode="after")
    def _no_unused_fields(self) -> Message:
        for key, value in (self.model_extra or {}).items():
            if value not in (None, [], {}, ""):
                raise ValueError(f"message field '{key}' is not supported; drop it")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError(
                "a 'tool' message needs 'tool_call_id' (the id of the call it answers)"
            )
        return self

    def to_expert(self) -> dict[str, Any]:
        """The message as an expert receives it (OpenAI's shape, text parts joined)."""
        out: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.tool_calls:
            out["tool_calls"] = [call.model_dump() for call in self.tool_calls]
            out["content"] = self.text() or None
        for key in ("name", "tool_call_id"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False
    include_obfuscation: bool = True  # OpenAI's default: chunks carry `obfuscation` padding


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat-completions request. Every field here is honoured; `parse_chat_request`
    refuses every other one with a 400 naming it (`serving/chat_params.py`)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    top_k: Annotated[int, Field(ge=-1)] | None = None  # vLLM's extension; 0 or -1: no limit
    continue_final_message: bool = False  # vLLM's extension: continue the last (assistant) message
    n: Annotated[int, Field(ge=1, le=128)] = 1  # at most router.max_choices (check_limits)
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[Tool], Field(min_length=1, max_length=128)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        return check_logit_bias(bias)

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.continue_final_message and self.messages[-1].role != "assistant":
            raise _Refusal("continue_final_message", "needs the last message to be the "
                           "assistant's, the text to continue")  # fmt: skip
        if self.top_logprobs is not None and not self.logprobs:
            raise _Refusal("top_logprobs", "needs 'logprobs': true")
        if self.stream_options is not None and not self.stream:
            raise _Refusal("stream_options", "is only allowed with 'stream': true")
        if self.tool_choice is not None and self.tool_choice != "none" and not self.tools:
            raise _Refusal("tool_choice", "needs 'tools'")
        names = [t.function.name for t in self.tools or []]
        chosen = (self.tool_choice.names if isinstance(self.tool_choice, AllowedToolsChoice) else
                  [self.tool_choice.function.name] if isinstance(self.tool_choice, NamedToolChoice)
                  else [])  # fmt: skip
        for name in chosen:
            if name not in names:
                raise _Refusal("tool_choice", f"names '{name}', which is not in 'tools' "
                               f"({', '.join(names)})")  # fmt: skip
        return self

    @property
    def calls_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"

    @property
    def structured(self) -> bool:
        """Whether the answer must follow a JSON format (`response_format` json_*)."""
        return self.response_format is not None and self.response_format.structured

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

    @property
    def streaming(self) -> StreamOptions:
        """`stream_options`, with OpenAI's defaults where the client sent none."""
        return self.stream_options or StreamOptions()

    def choices(self) -> list[ChatCompletionRequest]:
        """One request per choice (`n`), each asking for one; a `seed` becomes seed + index, so
        the choices differ and each is repeatable."""
        if self.n == 1:
            return [self]
        return [self.model_copy(update={"n": 1, "seed": None if self.seed is None else
                                        self.seed + i}) for i in range(self.n)]  # fmt: skip

    def plain_messages(self) -> list[dict[str, Any]]:
        return [m.to_expert() for m in self.messages]

    def expert_params(self) -> dict[str, Any]:
        """The optional parameters an `ExpertRequest` carries, in OpenAI's wire form."""
        params = self.model_dump(
            include={"presence_penalty", "frequency_penalty", "logit_bias", "logprobs",
                     "top_logprobs", "tool_choice", "parallel_tool_calls", "user", "top_k"},
            exclude_none=True,
        )  # fmt: skip
        if self.continue_final_message:
            params["continue_final_message"] = True
        if self.response_format is not None:
            params["response_format"] = self.response_format.model_dump(by_alias=True,
                                                                        exclude_none=True)  # fmt: skip
        tools = self.tools or []
        if isinstance(self.tool_choice, AllowedToolsChoice):  # the expert sees only those
            params["tool_choice"] = self.tool_choice.allowed_tools.mode
            tools = [t for t in tools if t.function.name in self.tool_choice.names]
        if tools:
            params["tools"] = [t.model_dump(exclude_none=True) for t in tools]
        return params

    def token_limit(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default


class _Refusal(ValueError):
    """A cross-field rule broken; carries the parameter to name in the 400."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}|{message}")


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or an InvalidRequestError saying what is wrong."""
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
    return data


def validation_error(exc: ValidationError) -> InvalidRequestError:
    """pydantic's first complaint as a 400 naming the parameter and the fix."""
    err = exc.errors()[0]
    param = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if "|" in msg and err["type"] == "value_error" and not param:  # a cross-field rule
        param, msg = msg.split("|", 1)
        return InvalidRequestError(f"'{param}' {msg}", param=param)
    if err["type"] == "missing":
        msg = "is required"
    elif err["type"] == "too_short" and param == "messages":
        msg = "must contain at least one message"
    return InvalidRequestError(
        f"'{param}': {msg} (got {err.get('input')!r:.100})", param=param.split(".")[0]
    )


def parse_chat_request(body: bytes | dict, max_messages: int) -> ChatCompletionRequest:
    """Bytes (or the decoded object) → validated request, or an InvalidRequestError that names
    the field and the fix. Fields Quorum does not honour are refused, never ignored."""
    data = body if isinstance(body, dict) else json_object(body)
    refused = refused_fields(data, set(ChatCompletionRequest.model_fields))
    if refused is not None:
        raise InvalidRequestError(refused[1], param=refused[0], code="unsupported_parameter")
    try:
        request = ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None
    if len(request.messages) > max_messages:
        raise InvalidRequestError(
            f"'messages' has {len(request.messages)} entries; at most {max_messages} are allowed",
            param="messages",
        )
    return request


def completion(
    request_id: str, model: str, choices: list[dict], usage: dict, extension: dict
) -> dict[str, Any]:
    """A `chat.completion` body; `choices` as `choice` builds them."""
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage,
        "quorum": extension,
    }


def choice(
    index: int,
    text: str,
    finish_reason: str | None,
    tool_calls: list[dict] | None = None,
    logprobs: list[dict] | None = None,
) -> dict[str, Any]:
    """One choice of a `chat.completion`. With `tool_calls` the message carries them (and
    `content` is null when there is no text); `logprobs` (OpenAI's `content` entries) when they
    were asked."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message |= {"content": text or None, "tool_calls": tool_calls}
    lp = None if logprobs is None else {"content": logprobs, "refusal": None}
    return {"index": index, "message": message, "logprobs": lp, "finish_reason": finish_reason}


def chunk(
    request_id: str,
    model: str,
    created: int,
    delta: dict[str, Any] | None,
    finish_reason: str | None = None,
    usage: dict | None = None,
    extension: dict | None = None,
    logprobs: list[dict] | None = None,
    index: int = 0,
) -> dict[str, Any]:
    lp = None if logprobs is None else {"content": logprobs, "refusal": None}
    body: dict[str, Any] = {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": []
        if delta is None
        else [{"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish_reason}],
    }
    if usage is not None:
        body["usage"] = usage
    if extension is not None:
        body["quorum"] = extension
    return body


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> dict:
    """OpenAI's `usage`; `prompt_tokens_details.cached_tokens` only when the expert said how many
    prompt tokens its prefix cache served."""
    body: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if cached_tokens is not None:
        body["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return body


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
