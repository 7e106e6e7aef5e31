"""Readiness: which experts are loaded, since when, and what a request does while its expert loads.

`Readiness` holds one state per expert: `loading` (its engine is starting), `ready` or `failed`,
each with the time it was entered. The ingress serves it as `/readyz` (200 once every expert, or
`router.readiness.min_ready` of them, is ready; 503 with `Retry-After` before) and marks the
experts of `/v1/models`; `/livez` only says the process is up. A request routed to an expert
that is loading waits for it up to `router.readiness.wait_s`, then gets a 503
(`ExpertLoadingError`) with `Retry-After`; one routed to a failed expert gets a 503 at once.

Who sets the states is wired from outside: in production `start_serve_poller` runs a thread that
asks Ray Serve for the expert deployments' status every `poll_s` seconds (`serving/deployments.py`
starts it); tests set them directly. Waiting requests look again every `WAIT_STEP_S`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from experts.errors import QuorumError
from experts.registry import Registry

__all__ = ["ExpertLoadingError", "Readiness", "serve_states", "start_serve_poller"]

log = logging.getLogger(__name__)

State = Literal["loading", "ready", "failed"]
WAIT_STEP_S = 0.25  # how often a waiting request looks at its expert's state again


class ExpertLoadingError(QuorumError):
    """The request's expert is still loading (or failed to): retry after `Retry-After` seconds."""

    status = 503
    type = "service_unavailable"
    code = "expert_loading"

    def __init__(self, message: str, *, retry_after_s: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s

    def __reduce__(self):
        return (_rebuild, (self.message, self.retry_after_s, self.code))

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


def _rebuild(message: str, retry_after_s: int, code: str | None) -> ExpertLoadingError:
    return ExpertLoadingError(message, retry_after_s=retry_after_s, code=code)


@dataclass(frozen=True)
class ExpertState:
    state: State
    since: float  # wall-clock time the state was entered
    detail: str | None = None

    def to_dict(self) -> dict:
        since = datetime.fromtimestamp(self.since, UTC).isoformat(timespec="seconds")
        return {"state": self.state, "since": since, "detail": self.detail}


class Readiness:
    """Per-expert states (set from any thread), and waiting for experts to become ready."""

    def __init__(
        self, registry: Registry, initial: State = "loading", clock: Callable[[], float] = time.time
    ) -> None:
        self.config = registry.router.readiness
        self.clock = clock
        now = clock()
        self.states = {e.name: ExpertState(initial, now) for e in registry.experts}
        self._lock = threading.Lock()

    def set(self, expert: str, state: State, detail: str | None = None) -> None:
        with self._lock:
            old = self.states[expert]
            since = old.since if old.state == state else self.clock()
            self.states[expert] = ExpertState(state, since, detail)
        if old.state != state:
            log.info("expert %s: %s -> %s%s", expert, old.state, state,
                     f" ({detail})" if detail else "")  # fmt: skip

    def ready(self) -> bool:
        """Whether the service may take traffic: every expert ready, or `min_ready` of them."""
        n = sum(s.state == "ready" for s in self.states.values())
        return n >= (self.config.min_ready or len(self.states))

    def snapshot(self) -> dict[str, dict]:
        return {name: s.to_dict() for name, s in self.states.items()}

    async def wait_for(self, experts: Iterable[str]) -> None:
        """Return once every one of `experts` is ready; a failed one, or one still loading after
        `wait_s`, raises `ExpertLoadingError` (503 + Retry-After)."""
        experts = list(experts)
        deadline = asyncio.get_running_loop().time() + self.config.wait_s
        while True:
            failed = [e for e in experts if self.states[e].state == "failed"]
            if failed:
                raise ExpertLoadingError(
                    f"expert '{failed[0]}' failed to load ({self.states[failed[0]].detail}); "
                    "retry later or ask for another model", retry_after_s=self.config.retry_after_s,
                    code="expert_failed_to_load",
                )  # fmt: skip
            loading = [e for e in experts if self.states[e].state == "loading"]
            if not loading:
                return
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                since = time.strftime("%H:%M:%S", time.gmtime(self.states[loading[0]].since))
                raise ExpertLoadingError(
                    f"expert '{loading[0]}' is still loading (since {since} UTC; waited "
                    f"{self.config.wait_s:g}s, router.readiness.wait_s); retry after "
                    f"{self.config.retry_after_s}s", retry_after_s=self.config.retry_after_s,
                )  # fmt: skip
            await asyncio.sleep(min(WAIT_STEP_S, left))


#: Ray Serve deployment status → expert state.
_SERVE_STATES: dict[str, State] = {
    "HEALTHY": "ready", "UPDATING": "loading", "UPSCALING": "ready", "DOWNSCALING": "ready",
    "UNHEALTHY": "failed", "DEPLOY_FAILED": "failed",
}  # fmt: skip


def serve_states(registry: Registry, deployments: dict[str, tuple[str, str]]) -> dict[str, tuple]:
    """Each expert's (state, detail) from Ray Serve's deployment statuses (`name -> (status,
    message)`): a hosted expert reads its own deployment (`expert-<name>`, or the shared
    `expert-pool` with residency); an `openai`-backend expert is not Quorum's to load: ready."""
    out = {}
    for expert in registry.experts:
        if expert.backend != "vllm":
            out[expert.name] = ("ready", "remote server; not probed")
            continue
        key = "expert-pool" if registry.residency is not None else f"expert-{expert.name}"
        status, message = deployments.get(key, ("UPDATING", "not deployed yet"))
        out[expert.name] = (_SERVE_STATES.get(status, "loading"), message or None)
    return out


def start_serve_poller(registry: Registry, readiness: Readiness) -> threading.Thread:
    """A daemon thread that, forever, asks Ray Serve for this application's deployment statuses
    every `poll_s` seconds and updates `readiness` (started in the ingress replica)."""
    from ray import serve

    app = serve.get_replica_context().app_name

    def poll() -> None:
        while True:
            try:
                deployments = serve.status().applications[app].deployments
                found = {name: (getattr(d.status, "value", str(d.status)), d.message)
                         for name, d in deployments.items()}  # fmt: skip
                for name, (state, detail) in serve_states(registry, found).items():
                    readiness.set(name, state, detail)
            except Exception as exc:  # the controller may be busy; states keep their last value
                log.warning("readiness poll failed: %s: %s", type(exc).__name__, exc)
            time.sleep(registry.router.readiness.poll_s)

    thread = threading.Thread(target=poll, name="readiness-poller", daemon=True)
    thread.start()
    return thread
