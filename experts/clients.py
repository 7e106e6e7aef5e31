"""How Quorum talks to an expert: one interface, `ExpertClient.stream_chat(request)`, whatever
runs the model (the streaming contract is in `experts/stream.py`).

| client                   | the expert                                                          |
|--------------------------|---------------------------------------------------------------------|
| `OpenAIHTTPExpertClient` | any OpenAI-compatible server (vLLM, TGI, a hosted API), over httpx  |
| `HandleExpertClient`     | a vLLM engine Quorum hosts on Ray Serve, through its deployment handle |
| `PoolExpertClient`       | a hosted expert in the shared pool (residency), through the pool's handle |

The handle clients take the handle as an argument and never import Ray, so the profiling job and
tests use this module without a cluster.
"""

from __future__ import annotations

import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Any

import httpx

from experts.errors import ExpertError, ExpertTimeoutError, ExpertUnavailableError, QuorumError
from experts.registry import Expert
from experts.stream import Delta, ExpertRequest, matched_stop

__all__ = ["REMOTE_BACKENDS", "ExpertClient", "HandleExpertClient", "OpenAIHTTPExpertClient",
           "PoolExpertClient",
           "stream_from_handle"]  # fmt: skip

log = logging.getLogger(__name__)


class ExpertClient(ABC):
    """Talks to one expert."""

    name: str

    @abstractmethod
    def stream_chat(self, request: ExpertRequest) -> AsyncIterator[Delta]:
        """Yield the answer as it is produced (the contract is in `experts/stream.py`)."""


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
        # Every OpenAI parameter the client set goes to the server as sent (`openai_params`);
        # usage is asked for so the answer's token counts are the server's.
        body = {
            "model": self._model,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            **request.openai_params(),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        finish: str | None = None
        stop_reason = None  # vLLM's servers name the stop string that matched; OpenAI does not
        usage: dict = {}
        calls = _ToolCallAccumulator()
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
                        stop_reason = choice.get("stop_reason") or stop_reason
                        delta = choice.get("delta") or {}
                        calls.add(delta.get("tool_calls"))
                        text = delta.get("content") or ""
                        logprobs = (choice.get("logprobs") or {}).get("content")
                        if text or logprobs:
                            yield Delta(text, None, 0, 0, logprobs or None)
        except httpx.TimeoutException:
            raise ExpertTimeoutError(
                f"expert '{self.name}' did not answer within {self._timeout:.0f}s"
            ) from None
        except (httpx.HTTPError, json.JSONDecodeError) as exc:
            raise ExpertUnavailableError(
                f"expert '{self.name}' at {self._url} is unreachable: {type(exc).__name__}: {exc}"
            ) from None
        yield Delta(
            "", finish or "stop", usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0),
            tool_calls=calls.calls() or None,
            stop=matched_stop(request, stop_reason, finish or "stop"),
            cached_tokens=(usage.get("prompt_tokens_details") or {}).get("cached_tokens"),
        )  # fmt: skip


class _ToolCallAccumulator:
    """Tool calls streamed in pieces (OpenAI's chunks: by `index`, the id, type and name once,
    the arguments in fragments) put back together."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}

    def add(self, pieces: list[dict[str, Any]] | None) -> None:
        for piece in pieces or []:
            call = self._calls.setdefault(
                piece.get("index", len(self._calls)),
                {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
            )
            call["id"] = piece.get("id") or call["id"]
            call["type"] = piece.get("type") or call["type"]
            function = piece.get("function") or {}
            call["function"]["name"] += function.get("name") or ""
            call["function"]["arguments"] += function.get("arguments") or ""

    def calls(self) -> list[dict[str, Any]]:
        return [self._calls[i] for i in sorted(self._calls)]


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
    """An expert hosted by Quorum, through its Ray Serve deployment's handle (the deployment runs
    `experts.hosted.HostedExpert`; `serving/deployments.py` wires it)."""

    def __init__(self, name: str, handle) -> None:  # handle: ray.serve.handle.DeploymentHandle
        self.name = name
        self._handle = handle.options(stream=True)

    def stream_chat(self, request: ExpertRequest) -> AsyncIterator[Delta]:
        return stream_from_handle(self.name, self._handle.stream_chat.remote(request))


class PoolExpertClient(ExpertClient):
    """An expert served by the shared expert pool (with `residency`: the pool deployment of
    `serving/deployments.py` runs the scheduler), through the pool's handle."""

    def __init__(self, name: str, handle: Any) -> None:  # ray.serve.handle.DeploymentHandle
        self.name = name
        self._handle = handle.options(stream=True)

    def stream_chat(self, request: ExpertRequest) -> AsyncIterator[Delta]:
        return stream_from_handle(self.name, self._handle.stream_chat.remote(self.name, request))


#: Experts served elsewhere: the registry's `backend` name → the client that talks to one such
#: expert (built from its registry entry). `vllm` experts are hosted by Quorum and reached
#: through their deployment's handle instead (`HandleExpertClient`, `PoolExpertClient`).
REMOTE_BACKENDS: dict[str, type[ExpertClient]] = {"openai": OpenAIHTTPExpertClient}
