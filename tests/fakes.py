"""The one fake expert client the tests use: `FakeExpert`, configured per test, in place of a real
`ExpertClient` (vLLM engine, HTTP server, Ray handle) passed to the Pipeline's constructor.

Each call of `stream_chat(request)` goes through these steps, in order:

1. record: `request` is appended to `requests` and `calls` goes up by one;
2. stall: `await asyncio.sleep(delay)` when `delay` is set (a stalled expert: `delay=30`);
3. gate: when `gate` (an `asyncio.Event`) is given, the requests recorded after the first `free`
   wait until it is set;
4. fail: when `error` is set and this is one of the first `fail` calls (any call when `fail` is
   None), yield `fail_after` deltas of `fail_text`, then raise a copy of `error`;
5. answer: the text, as deltas (below); the last one has `finish_reason`.

The text is `text` as given or, with `template=True`, `text.format(name=self.name,
question=<the content of the request's last message>)`: `"{name} says: {question}"` or
`"{question:.20}"` build it from the request. It is cut into deltas by `words`:

- `None`: the whole text in one delta;
- `"leading"`: at each space, the space starting the next word: `"a"`, `" b"`, `" c"`;
- `"trailing"`: at each space, the space ending the word: `"a "`, `"b "`, `"c"`;

or `text` is a list of texts (or templates), one delta each. Joined, the deltas are the text.

With `final_delta` (the default) the text deltas carry `partial_tokens` and an extra empty delta
`Delta("", finish_reason, prompt_tokens, completion_tokens)` ends the stream, as vLLM's last
delta does. Without it the last text delta is the final one (with `finish_reason` and those counts)
and the earlier ones carry `partial_tokens`. `completion_tokens=None` counts the text deltas.

Examples::

    FakeExpert("solo", "hello", prompt_tokens=11, completion_tokens=7)
    #   Delta("hello", None, 0, 0), Delta("", "stop", 11, 7)
    FakeExpert("m", "{name} says: {question}", template=True, words="leading")  # asked "x y"
    #   "m", " says:", " x", " y" (each with 0, 0 tokens), then Delta("", "stop", 0, 4)
    FakeExpert("a", "(C) prime", words="trailing", final_delta=False, prompt_tokens=10,
               partial_tokens=(10, 1))
    #   Delta("(C) ", None, 10, 1), Delta("prime", "stop", 10, 2)
    FakeExpert("flaky", error=ExpertError("engine died"), fail_after=2)     # fails every call
    #   Delta("tok ", None, 0, 0) twice, then raises ExpertError("engine died")
    FakeExpert("best", error=ExpertUnavailableError("replica died"), fail=1)  # 1st call only
    FakeExpert("slow", delay=30)                                              # stalls
    FakeExpert(n, requests=shared, gate=event, free=2)  # 2 calls over all fakes sharing the
                                                        # list pass; the rest wait for event.set()

With `tool_calls` the final delta carries those calls (OpenAI's shape); with `logprob` and a
request that asks for logprobs, every text delta carries one logprobs entry for its text (that
logprob, no alternatives).

Every option is a plain attribute: a test may change `text`, `error`, ... between requests.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Sequence
from typing import Literal

from experts.clients import ExpertClient
from experts.errors import QuorumError
from experts.stream import Delta, ExpertRequest, matched_stop

__all__ = ["FakeExpert"]


class FakeExpert(ExpertClient):
    """A scripted expert (see the module docstring for what one call does).

    Args:
        name: the expert's name (also `{name}` in a template).
        text: the answer, or a list of texts, one delta each.
        template: format `text` (each text of the list) with `str.format(name=..., question=...)`,
            `question` being the content of the request's last message.
        words: how a `str` text is cut: None (one delta), "leading" or "trailing" (word-sized,
            the separating space at the start of the next word or at the end of this one).
        final_delta: end with an extra empty delta that carries the finish and the counts (True)
            or put them on the last text delta (False).
        prompt_tokens, completion_tokens: the counts on the final delta; `completion_tokens`
            None means the number of text deltas.
        partial_tokens: (prompt, completion) counts on every other delta, failure deltas included.
        finish_reason: on the final delta.
        error: a `QuorumError` (ExpertError, ExpertUnavailableError,
            ContextLengthExceededError, ...) to raise; a fresh copy is raised each time.
        fail: how many first calls raise `error`; None (the default) means every call.
        fail_after: deltas of `fail_text` yielded before the error (0: before any token).
        delay: seconds to sleep at the start of every call (a stalled or queued expert).
        gate, free: when `gate` is given, calls past the first `free` (counted in `requests`, so
            over every fake sharing that list) wait for `gate.set()` before answering.
        requests: the list to record requests in; pass one list to several fakes to see all
            their calls in arrival order. A new list by default.
        tool_calls: tool calls (OpenAI's shape) put on the final delta.
        logprob: when the request asks for logprobs, each text delta carries one entry
            `{token: <its text>, logprob, bytes, top_logprobs: []}`.
        stop: the stop string the answer ended on, reported on the final delta (as the engine
            does, through `matched_stop`: only when the request sent it).
        cached_tokens: the prompt tokens the prefix cache served, on the final delta.

    Attributes read by tests: `requests` (every `ExpertRequest` received, in order) and `calls`
    (how many times this fake's `stream_chat` was started).
    """

    def __init__(
        self,
        name: str = "fake",
        text: str | Sequence[str] = "ok",
        *,
        template: bool = False,
        words: Literal["leading", "trailing"] | None = None,
        final_delta: bool = True,
        prompt_tokens: int = 0,
        completion_tokens: int | None = None,
        partial_tokens: tuple[int, int] = (0, 0),
        finish_reason: str = "stop",
        error: QuorumError | None = None,
        fail: int | None = None,
        fail_after: int = 0,
        fail_text: str = "tok ",
        delay: float = 0.0,
        gate: asyncio.Event | None = None,
        free: int = 0,
        requests: list[ExpertRequest] | None = None,
        tool_calls: list[dict] | None = None,
        logprob: float | None = None,
        stop: str | None = None,
        cached_tokens: int | None = None,
    ) -> None:
        if words not in (None, "leading", "trailing"):
            raise ValueError(f"words must be None, 'leading' or 'trailing', not {words!r}")
        self.name, self.text, self.template = name, text, template
        self.words, self.final_delta = words, final_delta
        self.prompt_tokens, self.completion_tokens = prompt_tokens, completion_tokens
        self.partial_tokens, self.finish_reason = partial_tokens, finish_reason
        self.error, self.fail, self.fail_after, self.fail_text = error, fail, fail_after, fail_text
        self.delay, self.gate, self.free = delay, gate, free
        self.requests: list[ExpertRequest] = [] if requests is None else requests
        self.calls = 0
        self.tool_calls, self.logprob, self.stop = tool_calls, logprob, stop
        self.cached_tokens = cached_tokens

    def chunks(self, request: ExpertRequest) -> list[str]:
        """The texts of the answer's deltas for `request` (before the optional empty last one)."""
        fields = {"name": self.name, "question": request.messages[-1]["content"] or ""}
        if not isinstance(self.text, str):
            return [t.format(**fields) if self.template else t for t in self.text]
        text = self.text.format(**fields) if self.template else self.text
        if self.words is None:
            return [text]
        parts = text.split(" ")
        if self.words == "leading":
            return [parts[0], *(" " + p for p in parts[1:])]
        return [*(p + " " for p in parts[:-1]), parts[-1]]

    async def stream_chat(self, request: ExpertRequest) -> AsyncIterator[Delta]:
        self.requests.append(request)
        self.calls += 1
        position, call = len(self.requests), self.calls
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.gate is not None and position > self.free:
            await self.gate.wait()
        partial = self.partial_tokens
        if self.error is not None and (self.fail is None or call <= self.fail):
            for _ in range(self.fail_after):
                yield Delta(self.fail_text, None, *partial)
            raise copy.copy(self.error)
        chunks = self.chunks(request)
        completion = len(chunks) if self.completion_tokens is None else self.completion_tokens
        final = (self.finish_reason, self.prompt_tokens, completion)
        stop = matched_stop(request, self.stop, self.finish_reason)
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1 and not self.final_delta
            logprobs = None
            if self.logprob is not None and request.logprobs:
                logprobs = [{"token": chunk, "logprob": self.logprob,
                             "bytes": list(chunk.encode()), "top_logprobs": []}]  # fmt: skip
            if last:
                yield Delta(chunk, *final, logprobs, self.tool_calls, stop, self.cached_tokens)
            else:
                yield Delta(chunk, None, *partial, logprobs)
        if self.final_delta:
            yield Delta("", *final, tool_calls=self.tool_calls, stop=stop,
                        cached_tokens=self.cached_tokens)


class WordCounter:
    """A `TokenCounter` for tests: every word of every message is 10 tokens."""

    def count(self, expert, messages, tools, continue_final=False):
        return 10 * sum(len((m.get("content") or "").split()) for m in messages)
