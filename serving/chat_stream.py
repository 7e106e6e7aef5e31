"""An answer's deltas as OpenAI's chat-completions output: SSE chunks (`sse_events`) or, gathered,
one completion's parts (`AnswerParts`). Text, logprobs and tool calls travel in OpenAI's shapes:
a text delta's chunk carries that delta's logprobs; tool calls (parsed from the whole answer,
`experts/vllm_chat.py`) come in one chunk before the finish, each with its `index`, `id`, `type`
and the complete `function` (OpenAI's clients accumulate chunks by `index`, so a single chunk per
call is read the same as many).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from experts.errors import QuorumError
from experts.stream import Delta
from serving.protocol import chunk, internal_error, usage
from serving.sse import obfuscation, sse

__all__ = ["AnswerParts", "sse_events", "tool_call_chunks"]

log = logging.getLogger(__name__)


@dataclass
class AnswerParts:
    """A whole answer gathered from its deltas: text, logprobs (when asked), tool calls, and the
    last delta (finish reason, token counts)."""

    want_logprobs: bool = False
    texts: list[str] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    last: Delta | None = None

    def add(self, delta: Delta) -> None:
        self.texts.append(delta.text)
        self.logprobs += delta.logprobs or []
        self.tool_calls += delta.tool_calls or []
        self.last = delta

    @property
    def text(self) -> str:
        return "".join(self.texts)

    def logprobs_or_none(self) -> list[dict[str, Any]] | None:
        return self.logprobs if self.want_logprobs else None


def tool_call_chunks(calls: list[dict[str, Any]]) -> dict[str, Any]:
    """The `delta` of the chunk that carries `calls`, each with its position as `index`."""
    return {"tool_calls": [{"index": i, **call} for i, call in enumerate(calls)]}


async def sse_events(
    request_id: str,
    model: str,
    created: int,
    first: Delta,
    rest: AsyncIterator[Delta],
    extension: dict,
    include_usage: bool,
    want_logprobs: bool = False,
    obfuscate: bool = False,
) -> AsyncIterator[bytes]:
    """An answer as OpenAI's SSE chunks: the role chunk (with the `quorum` extension), a chunk per
    delta, the tool calls, the final chunk (finish reason; for k > 1 the completed aggregation
    record), usage when asked, `[DONE]`. With `obfuscate` each content and tool-call chunk carries
    OpenAI's random `obfuscation` padding. A failure after the first byte ends the stream with an
    error event."""

    def piece(body: dict[str, Any], text: str) -> bytes:
        return sse(body | {"obfuscation": obfuscation(text)} if obfuscate else body)

    yield sse(chunk(request_id, model, created, {"role": "assistant", "content": ""},
                    extension=extension))  # fmt: skip
    delta: Delta | None = first
    last = first
    try:
        while delta is not None:
            last = delta
            if delta.text or (want_logprobs and delta.logprobs):
                logprobs = (delta.logprobs or []) if want_logprobs else None
                yield piece(chunk(request_id, model, created, {"content": delta.text},
                                  logprobs=logprobs), delta.text)  # fmt: skip
            if delta.tool_calls:
                calls = tool_call_chunks(delta.tool_calls)
                yield piece(chunk(request_id, model, created, calls), json.dumps(calls))
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
