"""Stage 5 of the pipeline: expert engines. One interface, `ExpertClient.stream_chat`, whatever runs
the model: a vLLM engine Quorum hosts on Ray Serve, or any OpenAI-compatible server over HTTP.

The streaming contract, written once: `stream_chat` yields `Delta`s as the model produces text;
the last one has `finish_reason` and the token counts. A failure raises an `ExpertError`
subclass (never a bare library exception), so the ingress maps it to one OpenAI error object.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from experts.engine import Delta
from experts.errors import ExpertError, ExpertTimeoutError, ExpertUnavailableError, QuorumError
from experts.registry import Expert

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExpertRequest:
    """What an expert needs to answer; plain data so it crosses Ray actor boundaries."""

    request_id: str
    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] | None = None
    seed: int | None = None


class ExpertClient(ABC):
    """Talks to one expert."""

    name: str

    @abstractmethod
    def stream_chat(self, request: ExpertRequest) -> AsyncIterator[Delta]:
        """Yield the answer as it is produced (see the module docstring for the contract)."""


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


async def stream_from_handle(name: str, response: Any) -> AsyncIterator[Delta]:
    """Deltas of a streaming Ray Serve call (`DeploymentResponseGenerator`), typed errors unwrapped.

    A consumer that stops early (client gone, batch cancelled, timeout) cancels the replica's
    request: Ray does not do that by itself, and the engine would generate to the end.
    """
    finished = False
    try:
        async for delta in response:
            yield delta
        finished = True
    except Exception as exc:
        finished = True  # the call is over; nothing to cancel
        # Ray wraps remote exceptions (as a RayTaskError subclass of the original's class);
        # a QuorumError raised in the replica is its `cause`: re-raise that, unwrapped.
        cause = getattr(exc, "cause", None)
        if isinstance(cause, QuorumError):
            raise cause from None
        if isinstance(exc, QuorumError):
            raise
        raise ExpertUnavailableError(
            f"expert '{name}' failed: {type(exc).__name__}: {str(exc)[:300]}"
        ) from None
    finally:
        if not finished:
            response.cancel()


class HandleExpertClient(ExpertClient):
    """An expert hosted by Quorum: a Ray Serve deployment (`serving.app.VLLMExpertServer`)."""

    def __init__(self, name: str, handle) -> None:  # handle: ray.serve.handle.DeploymentHandle
        self.name = name
        self._handle = handle.options(stream=True)

    def stream_chat(self, request: ExpertRequest) -> AsyncIterator[Delta]:
        return stream_from_handle(self.name, self._handle.stream_chat.remote(request))


class OpenAIHTTPExpertClient(ExpertClient):
    """An expert served elsewhere by an OpenAI-compatible server (vLLM, TGI, a hosted API)."""

    def __init__(self, expert: Expert, client: httpx.AsyncClient | None = None) -> None:
        self.name = expert.name
        self._model = expert.model
        self._url = expert.base_url.rstrip("/") + "/chat/completions"
        self._timeout = expert.timeout_s
        headers = {}
        if expert.api_key_env:
            key = os.environ.get(expert.api_key_env)
            if key:
                headers["Authorization"] = f"Bearer {key}"
        self._client = client or httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(expert.timeout_s, connect=10.0)
        )

    async def stream_chat(self, request: ExpertRequest) -> AsyncIterator[Delta]:
        body = {
            "model": self._model,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.stop:
            body["stop"] = request.stop
        if request.seed is not None:
            body["seed"] = request.seed
        finish: str | None = None
        usage: dict = {}
        try:
            async with self._client.stream("POST", self._url, json=body) as response:
                if response.status_code != 200:
                    detail = (await response.aread()).decode(errors="replace")[:300]
                    raise ExpertError(
                        f"expert '{self.name}' at {self._url} answered HTTP "
                        f"{response.status_code}: {detail}"
                    )
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    payload = json.loads(data)
                    if "error" in payload:
                        raise ExpertError(
                            f"expert '{self.name}': {payload['error'].get('message')}"
                        )
                    usage = payload.get("usage") or usage
                    for choice in payload.get("choices", []):
                        finish = choice.get("finish_reason") or finish
                        text = (choice.get("delta") or {}).get("content") or ""
                        if text:
                            yield Delta(text, None, 0, 0)
        except httpx.TimeoutException:
            raise ExpertTimeoutError(
                f"expert '{self.name}' did not answer within {self._timeout:.0f}s"
            ) from None
        except (httpx.HTTPError, json.JSONDecodeError) as exc:
            raise ExpertUnavailableError(
                f"expert '{self.name}' at {self._url} is unreachable: {type(exc).__name__}: {exc}"
            ) from None
        yield Delta(
            "", finish or "stop", usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        )


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
