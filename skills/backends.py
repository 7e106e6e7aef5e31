"""How the profiling job (skills/profile.py) asks experts: one session per expert, loaded once.

An `AnswerBackend` opens an `ExpertSession` for an expert; the session answers a batch of
conversations, yielding each `ExpertAnswer` as soon as it finishes (in any order). Tests pass
scripted backends; the real one, `RayVLLMBackend`, runs each hosted expert's vLLM engine in a Ray
actor of its own (`VLLMWorker`, with the registry's resources and env) and asks `backend: openai`
experts over HTTP from this process (`HTTPSession`). Requests go through the same code as the
service: `experts.stream.ExpertRequest`, `VLLMEngine.stream_request`, `experts.clients`.
"""

from __future__ import annotations

import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from experts.paths import OFFLINE_ENV
from experts.registry import Expert
from experts.stream import ExpertRequest

__all__ = ["AnswerBackend", "ExpertAnswer", "ExpertSession", "HTTPSession", "ProfileConfig",
           "RaySession", "RayVLLMBackend", "VLLMWorker"]  # fmt: skip

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProfileConfig:
    """How the job samples and scores. Changing sampling fields starts fresh results."""

    max_tokens: int = 16
    temperature: float = 0.0  # greedy: a profile should not depend on luck
    seed: int = 0
    prior_strength: float = 2.0
    aggregate_items: int = 8  # 0: do not measure aggregators
    concurrency: int = 1  # experts running at once
    progress: bool = True


def _request(config: ProfileConfig, index: int, messages: list[dict[str, str]]) -> ExpertRequest:
    """The request for the `index`-th conversation of a batch, with the job's sampling."""
    return ExpertRequest(f"profile-{index}-{time.time_ns()}", messages, config.max_tokens,
                         config.temperature, 1.0, None, config.seed)  # fmt: skip


@dataclass(frozen=True)
class ExpertAnswer:
    index: int  # position in the batch handed to `answer`
    text: str
    error: str | None = None  # the expert could not answer this one (it is graded wrong)


class ExpertSession(ABC):
    """One expert, loaded once, answering batches."""

    @abstractmethod
    def answer(self, conversations: list[list[dict[str, str]]]) -> Iterator[ExpertAnswer]:
        """Yield one `ExpertAnswer` per conversation, in any order, as each finishes."""

    def close(self) -> None:  # noqa: B027 (optional hook; fakes need nothing)
        """Release the expert (engine, actor)."""


class AnswerBackend(ABC):
    """Starts expert sessions: vLLM engines in Ray actors here, fakes in tests."""

    @abstractmethod
    def open(self, expert: Expert, config: ProfileConfig) -> ExpertSession: ...


def _as_completed(loop: Any, coros: list[Any]) -> Iterator[Any]:
    """Run `coros` together on `loop`, yielding each result as soon as it is ready."""
    import asyncio

    pending = {loop.create_task(c) for c in coros}
    while pending:
        done, pending = loop.run_until_complete(
            asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        )
        for task in done:
            yield task.result()


class HTTPSession(ExpertSession):
    """An expert already served elsewhere (`backend: openai`), asked over HTTP from this process."""

    def __init__(self, expert: Expert, config: ProfileConfig, http: Any | None = None) -> None:
        import asyncio

        from experts.clients import OpenAIHTTPExpertClient

        self.loop = asyncio.new_event_loop()
        self.client = OpenAIHTTPExpertClient(expert, http)  # http: an httpx.AsyncClient (tests)
        self.config = config

    def answer(self, conversations: list[list[dict[str, str]]]) -> Iterator[ExpertAnswer]:
        from experts.errors import ExpertError
        from experts.stream import collect

        async def one(i: int, messages: list[dict[str, str]]) -> ExpertAnswer:
            try:
                text, _ = await collect(self.client.stream_chat(_request(self.config, i, messages)))
            except ExpertError as exc:  # recorded with the answer and graded wrong, not dropped
                return ExpertAnswer(i, "", exc.message)
            return ExpertAnswer(i, text)

        yield from _as_completed(self.loop, [one(i, c) for i, c in enumerate(conversations)])

    def close(self) -> None:
        self.loop.close()


class VLLMWorker:
    """Body of the Ray actor: one vLLM engine on an event loop of its own."""

    def __init__(self, expert: dict[str, Any], config: dict[str, Any]) -> None:
        import asyncio

        from experts.engine import VLLMEngine
        from experts.models import resolve_model

        self.expert = Expert.model_validate(expert)
        self.config = ProfileConfig(**config)
        # vLLM binds its output task to the loop it is created on: create it on ours.
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.engine = self.loop.run_until_complete(VLLMEngine.create(
            resolve_model(self.expert.model), max_model_len=self.expert.context_length,
            engine_kwargs=self.expert.engine_args, name=self.expert.name,
            moe_kernels=self.expert.moe_kernels))  # fmt: skip

    def startup_s(self) -> float:
        return self.engine.startup_s

    def answer(self, conversations: list[list[dict[str, str]]]) -> Iterator[ExpertAnswer]:
        from experts.errors import ContextLengthExceededError

        async def one(i: int, messages: list[dict[str, str]]) -> ExpertAnswer:
            parts = []
            try:
                async for d in self.engine.stream_request(_request(self.config, i, messages)):
                    parts.append(d.text)
            except ContextLengthExceededError as exc:
                return ExpertAnswer(i, "", f"context length: {exc}")
            return ExpertAnswer(i, "".join(parts))

        # All requests at once (vLLM batches them); hand each back the moment it completes.
        yield from _as_completed(self.loop, [one(i, c) for i, c in enumerate(conversations)])

    def shutdown(self) -> None:
        self.engine.shutdown()


class RaySession(ExpertSession):
    """A `VLLMWorker` actor, its answers streamed back as they finish."""

    def __init__(self, actor: Any) -> None:
        self._actor = actor

    def answer(self, conversations: list[list[dict[str, str]]]) -> Iterator[ExpertAnswer]:
        import ray

        for ref in self._actor.answer.options(num_returns="streaming").remote(conversations):
            yield ray.get(ref)

    def close(self) -> None:
        import ray

        try:
            ray.get(self._actor.shutdown.remote(), timeout=60)
        finally:
            ray.kill(self._actor)


class RayVLLMBackend(AnswerBackend):
    """Each hosted expert in a Ray actor holding a vLLM engine, with the registry's resources and
    env; `backend: openai` experts are asked over HTTP from this process.
    Starts a local Ray instance unless one is running (or `RAY_ADDRESS` names a cluster)."""

    def __init__(self, num_cpus: int | None = None) -> None:
        self.num_cpus = num_cpus
        self._connected = False

    def shutdown(self) -> None:
        """Disconnect from Ray (stopping the local instance if this backend started one)."""
        if self._connected:
            import ray

            ray.shutdown()
            self._connected = False

    def open(self, expert: Expert, config: ProfileConfig) -> ExpertSession:
        if expert.backend == "openai":
            return HTTPSession(expert, config)
        import ray

        if not ray.is_initialized():
            local = {} if os.environ.get("RAY_ADDRESS") else {"num_cpus": self.num_cpus}
            ray.init(ignore_reinit_error=True, include_dashboard=False, **local)
            self._connected = True
        if expert.model.startswith("builtin:"):  # only when this expert has work to do
            from experts.models import prepare_builtin_models

            prepare_builtin_models([expert.model.removeprefix("builtin:")])
        env = {**OFFLINE_ENV, **expert.env}
        actor = ray.remote(VLLMWorker).options(
            num_cpus=expert.resources.cpus, num_gpus=expert.resources.gpus,
            runtime_env={"env_vars": env}, name=f"profile-{expert.name}-{os.getpid()}",
        ).remote(expert.model_dump(mode="json"), config.__dict__)  # fmt: skip
        startup = ray.get(actor.startup_s.remote())  # engine load errors surface here
        log.info("expert %s loaded in %.1f s", expert.name, startup)
        return RaySession(actor)
