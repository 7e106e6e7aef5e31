"""`POST /v1/completions`: OpenAI's legacy text completions, through the chat pipeline.

The prompt is routed like a chat request's last user turn and sent to the expert as one user
message (so through the expert's chat template: Quorum's experts are chat models). The
parameters map one to one onto chat's; `logprobs: N` (legacy) becomes `logprobs: true,
top_logprobs: N` and comes back in the legacy shape (`tokens`, `token_logprobs`,
`top_logprobs`, `text_offset`). `echo`, `suffix`, `best_of` > 1 and token-id prompts are refused.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from experts.errors import InvalidRequestError, QuorumError
from experts.registry import RouterConfig
from serving.compat import Surface, in_their_words, refuse, validate
from serving.contract import chat_schema, noop_only, request_body
from serving.pipeline import Pipeline, answered_by, routing_headers
from serving.protocol import StreamOptions, internal_error, usage
from serving.sse import obfuscation, sse

__all__ = ["CompletionRequest", "install", "legacy_logprobs"]

#: chat parameter -> this API's name for it, in error messages
NAMES = {"messages": "prompt"}

REFUSED = {
    "echo": (False, "the prompt is not echoed; drop 'echo'"),
    "suffix": (None, "insertion (suffix) is not served; drop 'suffix'"),
    "best_of": (1, "one completion per request; drop 'best_of' or send 1"),
    "n": (1, "one completion per request here; send n=1, or ask /v1/chat/completions for n "
          "choices"),
}


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1)
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = 16  # OpenAI's default for this endpoint
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    top_k: int | None = None  # vLLM's extension, as in chat
    n: int = 1
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    user: str | None = None
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def chat(self) -> dict[str, Any]:
        """The same request as a chat request's body."""
        body = self.model_dump(exclude={"prompt", "logprobs", "echo", "suffix", "best_of"},
                               exclude_none=True)  # fmt: skip
        body["messages"] = [{"role": "user", "content": self.text}]
        if self.logprobs is not None:
            body |= {"logprobs": True, "top_logprobs": self.logprobs}
        return body


def legacy_logprobs(entries: list[dict[str, Any]], offset: int = 0) -> dict[str, Any]:
    """Chat's `logprobs.content` entries in the legacy completions shape."""
    offsets, at = [], offset
    for e in entries:
        offsets.append(at)
        at += len(e["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
        "text_offset": offsets,
    }


def _body(rid, model, created, text, finish, logprobs, extension=None, use=None) -> dict:
    body: dict[str, Any] = {
        "id": rid, "object": "text_completion", "created": created, "model": model,
        "choices": [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish}],
    }  # fmt: skip
    if use is not None:
        body["usage"] = use
    if extension is not None:
        body["quorum"] = extension
    return body


def published(limits: RouterConfig) -> dict[str, Any]:
    """`openapi_extra` for this body: the model's schema, with chat's rules for shared fields."""
    chat = chat_schema(limits)
    text = {"type": "string", "maxLength": limits.max_message_chars}
    shared = {k: chat["properties"][k] for k in ("stream_options", "stop", "seed", "user",
              "presence_penalty", "frequency_penalty", "logit_bias", "temperature", "top_p", "top_k")}  # fmt: skip
    extra = request_body(CompletionRequest, shared | noop_only(REFUSED) | {
        "prompt": {"anyOf": [text, {"type": "array", "items": text, "minItems": 1, "maxItems": 1}]},
        "max_tokens": {"anyOf": [{"type": "integer", "minimum": 1,
                                  "maximum": limits.max_tokens_cap}, {"type": "null"}]},
        "n": {"type": "integer", "minimum": 1, "maximum": 1},
    })  # fmt: skip
    extra["requestBody"]["content"]["application/json"]["schema"]["allOf"] = [chat["allOf"][1]]
    return extra


def install(api: FastAPI, service: Pipeline, surface: Surface) -> None:
    @api.post("/v1/completions", openapi_extra=published(service.registry.router))
    async def completions(request: Request) -> Response:
        data = await surface.body(request)
        refuse(data, REFUSED)
        if (
            isinstance(data.get("prompt"), list)
            and data["prompt"]
            and not isinstance(data["prompt"][0], str)
        ):
            raise InvalidRequestError("'prompt' as token ids is not served; send the text",
                                      param="prompt")  # fmt: skip
        legacy = validate(CompletionRequest, data)
        chat = in_their_words(surface.chat, legacy.chat(), NAMES)
        if chat.stream:
            started = await service.start(chat)
            events = _stream(started, legacy, chat.streaming)
            headers = started.headers | {"cache-control": "no-cache", "x-accel-buffering": "no"}
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        answer, parts = await service.gather(chat)
        last = parts.last
        rid = answer.request_id.replace("chatcmpl-", "cmpl-")
        model = answered_by(answer.decision, answer.extension)
        logprobs = legacy_logprobs(parts.logprobs) if legacy.logprobs is not None else None
        body = _body(rid, model, int(time.time()), parts.text, last.finish_reason, logprobs,
                     answer.extension, usage(last.prompt_tokens, last.completion_tokens,
                                            last.cached_tokens))  # fmt: skip
        headers = routing_headers(answer.request_id, answer.decision, answer.extension)
        return JSONResponse(body, headers=headers)


async def _stream(
    started, legacy: CompletionRequest, options: StreamOptions
) -> AsyncIterator[bytes]:
    answer = started.answer
    rid, created = answer.request_id.replace("chatcmpl-", "cmpl-"), int(time.time())
    delta, last, offset = started.first, started.first, 0
    first = True
    try:
        while delta is not None:
            last = delta
            if delta.text or first:
                lp = None
                if legacy.logprobs is not None:
                    lp = legacy_logprobs(delta.logprobs or [], offset)
                offset += len(delta.text)
                body = _body(rid, started.model, created, delta.text, None, lp,
                             answer.extension if first else None)  # fmt: skip
                if options.include_obfuscation:
                    body["obfuscation"] = obfuscation(delta.text)
                yield sse(body)
                first = False
            delta = await anext(started.rest, None)
    except QuorumError as exc:
        yield sse(exc.to_openai())
        return
    except Exception:
        yield sse(internal_error(answer.request_id).to_openai())
        return
    yield sse(_body(rid, started.model, created, "", last.finish_reason or "stop", None))
    if options.include_usage:
        body = _body(rid, started.model, created, "", None, None,
                     use=usage(last.prompt_tokens, last.completion_tokens, last.cached_tokens))  # fmt: skip
        body["choices"] = []
        yield sse(body)
    yield sse("[DONE]")
