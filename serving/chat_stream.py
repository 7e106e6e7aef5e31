"""An answer's deltas as OpenAI's chat-completions output: SSE chunks (`sse_events`, one
`ChoiceStream` per choice, `n` of them interleaved) or, gathered, one choice's parts
(`AnswerParts`). Text, logprobs and tool calls travel in OpenAI's shapes:
a text delta's chunk carries that delta's logprobs; tool calls (parsed from the whole answer,
`experts/vllm_chat.py`) come in one chunk before the finish, each with its `index`, `id`, `type`
and the complete `function` (OpenAI's clients accumulate chunks by `index`, so a single chunk per
call is read the same as many).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from experts.errors import QuorumError
from experts.stream import Delta
from serving.protocol import chunk, internal_error, usage
from serving.sse import obfuscation, sse

__all__ = ["AnswerParts", "ChoiceStream", "sse_events", "tool_call_chunks"]

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


class ChoiceStream:
    """One choice of a streamed answer as chunk bodies (`chunks`): the role chunk (with the
    `quorum` extension), a chunk per delta, the tool calls, the finish chunk (for k > 1 with the
    completed aggregation record). With `obfuscate` each content and tool-call chunk carries
    OpenAI's random `obfuscation` padding. `last` is the last delta once the chunks are done."""

    def __init__(
        self, request_id: str, model: str, created: int, first: Delta, rest: AsyncIterator[Delta],
        extension: dict, *, index: int = 0, want_logprobs: bool = False, obfuscate: bool = False,
    ) -> None:  # fmt: skip
        self.request_id, self.model, self.created, self.index = request_id, model, created, index
        self.first, self.rest, self.extension = first, rest, extension
        self.want_logprobs, self.obfuscate = want_logprobs, obfuscate
        self.last = first

    def _chunk(self, delta: dict[str, Any], padded: str | None = None, **fields: Any) -> dict:
        body = chunk(self.request_id, self.model, self.created, delta, index=self.index, **fields)
        if padded is not None and self.obfuscate:
            body["obfuscation"] = obfuscation(padded)
        return body

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        yield self._chunk({"role": "assistant", "content": ""}, extension=self.extension)
        delta: Delta | None = self.first
        while delta is not None:
            self.last = delta
            if delta.text or (self.want_logprobs and delta.logprobs):
                logprobs = (delta.logprobs or []) if self.want_logprobs else None
                yield self._chunk({"content": delta.text}, delta.text, logprobs=logprobs)
            if delta.tool_calls:
                calls = tool_call_chunks(delta.tool_calls)
                yield self._chunk(calls, json.dumps(calls))
            delta = await anext(self.rest, None)
        final = ({"aggregation": self.extension["aggregation"]}
                 if "aggregation" in self.extension else None)  # fmt: skip
        yield self._chunk({}, finish_reason=self.last.finish_reason or "stop", extension=final)


async def sse_events(choices: list[ChoiceStream], include_usage: bool) -> AsyncIterator[bytes]:
    """An answer's choices as OpenAI's SSE chunks, interleaved as they come, then usage when
    asked (the prompt once, the completions of every choice) and `[DONE]`. A failure after the
    first byte ends the stream with an error event."""
    first = choices[0]
    try:
        async for body in _merged([c.chunks() for c in choices]):
            yield sse(body)
    except QuorumError as exc:
        log.warning("request %s: stream failed: %s", first.request_id, exc.message)
        yield sse(exc.to_openai())
        return
    except Exception:
        log.exception("request %s: stream failed", first.request_id)
        yield sse(internal_error(first.request_id).to_openai())
        return
    if include_usage:
        completion = sum(c.last.completion_tokens for c in choices)
        yield sse(chunk(first.request_id, first.model, first.created, None,
                        usage=usage(first.last.prompt_tokens, completion,
                                    first.last.cached_tokens)))  # fmt: skip
    yield sse("[DONE]")


async def _merged(streams: list[AsyncIterator[dict]]) -> AsyncIterator[dict]:
    """The items of several streams as they come; the first failure ends them all."""
    if len(streams) == 1:
        async for item in streams[0]:
            yield item
        return
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    async def pump(stream: AsyncIterator[dict]) -> None:
        try:
            async for item in stream:
                await queue.put(("item", item))
            await queue.put(("done", None))
        except Exception as exc:
            await queue.put(("error", exc))

    tasks = [asyncio.create_task(pump(stream)) for stream in streams]
    try:
        running = len(tasks)
        while running:
            kind, value = await queue.get()
            if kind == "error":
                raise value
            if kind == "done":
                running -= 1
            else:
                yield value
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
