"""The plain data every stage passes around: what an expert is asked (`ExpertRequest`) and what
it streams back (`Delta`), with two helpers over such streams. Imports neither vLLM nor Ray, so
every stage and every test can use it.

The streaming contract, written once: an expert yields `Delta`s as the model produces text; the
last one has `finish_reason` and the token counts. A failure raises an `ExpertError` subclass
(never a bare library exception), so the ingress maps it to one OpenAI error object.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from experts.errors import ExpertError, ExpertTimeoutError

__all__ = ["Delta", "ExpertRequest", "collect", "matched_stop", "template_ending",
           "with_timeout"]


@dataclass(frozen=True)
class Delta:
    """New text since the previous delta. The last delta has `finish_reason` set.

    `prompt_tokens` is the prompt's length; `completion_tokens` counts generated tokens so far
    (final on the last delta). `finish_reason` is "stop" (EOS or a stop string), "length"
    (max_tokens or the context limit) or "abort".
    """

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    # OpenAI's `logprobs.content` entries for this delta's tokens (`{token, logprob, bytes,
    # top_logprobs}`), when the request asked for logprobs.
    logprobs: list[dict[str, Any]] | None = None
    # Complete tool calls in OpenAI's shape (`{id, type: "function", function: {name,
    # arguments}}`), on the last delta of an answer that called tools.
    tool_calls: list[dict[str, Any]] | None = None
    # On the last delta: which of the request's `stop` strings ended the answer, when one did
    # (None for EOS, the limit, or a stop string of the model's own).
    stop: str | None = None
    # On the last delta: how many prompt tokens the engine's prefix cache served (vLLM's
    # `num_cached_tokens`; a server's `usage.prompt_tokens_details.cached_tokens`), None if unknown.
    cached_tokens: int | None = None


@dataclass(frozen=True)
class ExpertRequest:
    """What an expert needs to answer; plain data so it crosses Ray actor boundaries."""

    request_id: str
    messages: list[dict[str, Any]]  # OpenAI chat messages (role, content; tool_calls, ...)
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] | None = None
    seed: int | None = None
    # The rest of OpenAI's chat parameters, as the client sent them (validated at the ingress);
    # `openai_params()` gives them back in OpenAI's wire form.
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None
    top_k: int | None = None  # vLLM's extension: sample from the k likeliest tokens (0, -1: all)
    # vLLM's extension: the answer continues the last (assistant) message (Anthropic's prefill)
    continue_final_message: bool = False

    def openai_params(self) -> dict[str, Any]:
        """The optional OpenAI chat parameters this request sets, as OpenAI's body spells them
        (what an `openai`-backend expert receives verbatim, and what vLLM's own request type is
        built from for a hosted one)."""
        names = ("stop", "seed", "presence_penalty", "frequency_penalty", "logit_bias",
                 "top_logprobs", "response_format", "tools", "tool_choice",
                 "parallel_tool_calls", "user", "top_k")  # fmt: skip
        params = {n: getattr(self, n) for n in names if getattr(self, n) is not None}
        if self.logprobs:
            params["logprobs"] = True
        if self.continue_final_message:
            params |= template_ending(continue_final=True)
        return params

    @property
    def calls_tools(self) -> bool:
        """Whether the answer may be tool calls (tools given and tool_choice is not "none")."""
        return bool(self.tools) and self.tool_choice != "none"


def template_ending(continue_final: bool) -> dict[str, bool]:
    """How the chat template ends the prompt, in the keywords both transformers'
    `apply_chat_template` and vLLM's chat request take: a new assistant turn, or (`continue_final`)
    inside the last message, so the answer continues its text."""
    if continue_final:
        return {"continue_final_message": True, "add_generation_prompt": False}
    return {"add_generation_prompt": True}


def matched_stop(request: ExpertRequest, reason: Any, finish_reason: str | None) -> str | None:
    """The request's stop string that ended an answer: vLLM's `stop_reason` (the matched string,
    or a stop token's id) when the answer stopped there and the string is one the request sent."""
    if finish_reason == "stop" and isinstance(reason, str) and reason in (request.stop or []):
        return reason
    return None


async def collect(deltas: AsyncIterator[Delta]) -> tuple[str, Delta]:
    """Drain a stream: the whole text and the final delta (finish reason, token counts)."""
    parts: list[str] = []
    last: Delta | None = None
    async for delta in deltas:
        parts.append(delta.text)
        last = delta
    if last is None:
        raise ExpertError("the expert closed its stream without answering")
    return "".join(parts), last


async def with_timeout(
    deltas: AsyncIterator[Delta], expert: str, seconds: float
) -> AsyncIterator[Delta]:
    """Bound the whole answer's time; a stalled expert becomes an ExpertTimeoutError.

    The deadline wraps each wait for the expert, not the consumer's work between deltas."""
    deadline = asyncio.get_running_loop().time() + seconds
    iterator = aiter(deltas)
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                delta = await anext(iterator)
        except StopAsyncIteration:
            return
        except TimeoutError:
            await iterator.aclose()
            raise ExpertTimeoutError(
                f"expert '{expert}' did not finish within {seconds:g}s (its timeout_s in the registry)"
            ) from None
        yield delta
