"""Stage 4 of the pipeline: dispatch. The request goes to its expert, with retry, fallback to the
next-best expert, and a circuit breaker per expert.

Between recruit and the expert engines. `FaultPolicy.stream(request, ranked)` starts the answer on
the first expert of `ranked` (the router's candidates, best first) and, while no token has reached
the client yet, handles a failure by

1. retrying the same expert (`router.faults.retries` times; meant for experts with several
   replicas, where Serve's router can send the retry to another one; a timeout is retried only
   on those: with one replica, Serve queues requests while it replaces a dead replica, and the
   first-token timeout is what notices), then
2. falling back to the next expert of `ranked` (at most `max_fallbacks` of them).

An expert whose last `breaker_failures` answers all failed has its breaker opened: for
`breaker_cooldown_s` it is only tried after every healthy candidate failed; after the cool-down
one request probes it (half-open) and its outcome closes or re-opens the breaker.

A non-streaming request is answered whole before anything is returned, so for it a failure in
the middle of the answer is retried and falls back too (`buffered`).

Every fallback is reported through `on_fallback(from, to, reason)` (the `quorum_fallbacks`
metric in production) and listed in `FallbackStream.fallbacks`, which the ingress puts in the
routing decision as `routing.fallbacks: [{from, to, reason}]`. Once a streamed token has been sent
the expert cannot change: a later failure ends the answer with an error (and counts against the
expert's breaker).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

from experts.clients import ExpertClient
from experts.errors import ExpertError, ExpertTimeoutError, ExpertUnavailableError, QuorumError
from experts.registry import Expert, FaultConfig, Registry
from experts.stream import Delta, ExpertRequest

__all__ = ["CircuitBreaker", "FallbackStream", "FaultPolicy", "fallback_order", "metric_fallback"]

log = logging.getLogger(__name__)

FallbackHook = Callable[[str, str, str], None]
Clock = Callable[[], float]


def metric_fallback(from_expert: str, to_expert: str, reason: str) -> None:
    """Count a fallback in the `quorum_fallbacks` metric (serving/metrics.py)."""
    from serving.metrics import record_fallback

    record_fallback(from_expert, to_expert, reason)


def fallback_order(decision_experts: list[str], recruitment: dict | None) -> list[str]:
    """Experts to try, best first: the chosen ones, then every other candidate by utility."""
    ranked = list(decision_experts)
    for score in (recruitment or {}).get("scores", []):
        if score["expert"] not in ranked:
            ranked.append(score["expert"])
    return ranked


@dataclass
class CircuitBreaker:
    """Closed → (N consecutive failures) → open → (cool-down) → half-open: one probe → closed/open."""

    failures_to_open: int
    cooldown_s: float
    clock: Clock = time.monotonic
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def state(self) -> str:
        with self._lock:
            return self._state()

    def _state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if self.clock() - self.opened_at >= self.cooldown_s:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        """May a request go to this expert now? In half-open state only one probe at a time."""
        with self._lock:
            state = self._state()
            if state == "closed":
                return True
            if state == "half_open" and not self.probing:
                self.probing = True
                return True
            return False

    def success(self) -> None:
        with self._lock:
            self.failures, self.opened_at, self.probing = 0, None, False

    def failure(self) -> None:
        with self._lock:
            self.failures += 1
            if self.probing or self.failures >= self.failures_to_open:
                self.opened_at = self.clock()
            self.probing = False

    def release(self) -> None:
        """The request was cancelled before an outcome: free the probe slot, judge nothing."""
        with self._lock:
            self.probing = False


class FallbackStream:
    """The answer as an async iterator of `Delta`s, plus who answered and what fell back.

    `expert` is the expert answering (it changes if a fallback happens before the first delta);
    `fallbacks` is filled as fallbacks happen: `[{"from", "to", "reason"}]`."""

    def __init__(
        self, policy: FaultPolicy, request: ExpertRequest, ranked: list[str], buffered: bool
    ) -> None:
        self.expert = ranked[0]
        self.fallbacks: list[dict[str, str]] = []
        self.attempts = 0
        self._policy = policy
        self._request = request
        self._ranked = ranked
        self._buffered = buffered
        self._inner = self._run()

    def __aiter__(self) -> FallbackStream:
        return self

    async def __anext__(self) -> Delta:
        return await self._inner.__anext__()

    async def aclose(self) -> None:
        await self._inner.aclose()

    def _plan(self) -> Iterator[str]:
        """Experts in rank order whose breaker lets this request through, then the open ones.

        Lazy: a breaker is asked only when its expert is next, so a half-open one hands its
        single probe slot only to a request that really tries it."""
        limit = 1 + self._policy.config.max_fallbacks if len(self._ranked) > 1 else 1
        deferred = []
        for name in self._ranked[:limit]:
            if self._policy.breaker(name).allow():
                yield name
            else:
                deferred.append(name)
        yield from deferred

    async def _run(self) -> AsyncIterator[Delta]:
        policy = self._policy
        plan = self._plan()
        last_error: ExpertError | None = None
        partial: list[Delta] = []  # what the last failed buffered attempt produced
        previous: str | None = None
        for name in plan:
            if previous is not None:
                reason = last_error.code if last_error is not None else "circuit_open"
                self._record_fallback(previous, name, reason or "expert_failed")
            elif name != self._ranked[0]:  # the best expert's breaker is open: skipped
                self._record_fallback(self._ranked[0], name, "circuit_open")
            previous = name
            self.expert = name
            for attempt in range(1 + policy.config.retries):
                self.attempts += 1
                started = False
                answer: list[Delta] = []
                try:
                    if self._buffered:  # nothing reaches the client until the answer is whole
                        async for delta in policy.attempt(name, self._request):
                            answer.append(delta)
                    else:
                        async for delta in policy.attempt(name, self._request):
                            started = True
                            yield delta
                except ExpertError as exc:
                    policy.breaker(name).failure()
                    if started:
                        raise  # the client already has tokens from this expert
                    last_error, partial = exc, answer
                    log.warning("request %s: expert %s attempt %d failed: %s",
                                self._request.request_id, name, attempt + 1, exc.code)  # fmt: skip
                    if not policy.retryable(name, exc):
                        break
                    if attempt < policy.config.retries:
                        await asyncio.sleep(policy.retry_delay_s)
                    continue
                except BaseException:
                    # Cancelled or closed by the consumer: a probe slot must not stay taken.
                    policy.breaker(name).release()
                    raise
                policy.breaker(name).success()
                for delta in answer:
                    yield delta
                return
        # Every try failed. A buffered attempt's partial output still goes to the observers (its
        # tokens were spent); the client gets only the error.
        for delta in partial:
            yield delta
        raise last_error or ExpertUnavailableError("no expert could be tried")

    def _record_fallback(self, from_expert: str, to_expert: str, reason: str) -> None:
        self.fallbacks.append({"from": from_expert, "to": to_expert, "reason": reason})
        self._policy.fallback_counts[(from_expert, to_expert, reason)] = (
            self._policy.fallback_counts.get((from_expert, to_expert, reason), 0) + 1
        )
        log.warning("request %s: falling back from %s to %s (%s)",
                    self._request.request_id, from_expert, to_expert, reason)  # fmt: skip
        if self._policy.on_fallback is not None:
            try:
                self._policy.on_fallback(from_expert, to_expert, reason)
            except Exception:  # a metrics backend must not fail the request it describes
                log.exception("fallback metric hook failed")


class FaultPolicy:
    """Retries, fallback and breakers for a set of experts (one instance per ingress replica)."""

    def __init__(
        self,
        clients: dict[str, ExpertClient],
        registry: Registry,
        *,
        on_fallback: FallbackHook | None = None,
        clock: Clock = time.monotonic,
        retry_delay_s: float = 0.05,
    ) -> None:
        self.clients = clients
        self.registry = registry
        self.config: FaultConfig = registry.router.faults
        self.on_fallback = on_fallback
        self.clock = clock
        self.retry_delay_s = retry_delay_s
        self.fallback_counts: dict[tuple[str, str, str], int] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()

    def breaker(self, expert: str) -> CircuitBreaker:
        with self._lock:
            if expert not in self._breakers:
                self._breakers[expert] = CircuitBreaker(
                    self.config.breaker_failures, self.config.breaker_cooldown_s, self.clock
                )
            return self._breakers[expert]

    def retryable(self, expert: str, error: ExpertError) -> bool:
        """Whether another try on the same expert may help. A replica that died is replaced by
        Serve, so a retry goes elsewhere; a timeout repeats on a single-replica expert."""
        if isinstance(error, ExpertTimeoutError):
            return self.registry.expert(expert).replicas > 1
        return True

    def states(self) -> dict[str, str]:
        """Breaker state per expert that has been used: closed, open or half_open."""
        with self._lock:
            breakers = dict(self._breakers)
        return {name: b.state for name, b in breakers.items()}

    def stream(
        self,
        request: ExpertRequest,
        ranked: list[str],
        *,
        allow_fallback: bool = True,
        buffered: bool = False,
    ) -> FallbackStream:
        """The answer for `request` from the first of `ranked` that answers (see module doc).

        `buffered` (non-streaming requests): each attempt's answer is collected whole before any
        delta is passed on, so a failure midway can still be retried or fall back."""
        if not ranked:
            raise ValueError("no expert to send the request to")
        if not (allow_fallback and self.config.fallback):
            ranked = ranked[:1]
        return FallbackStream(self, request, ranked, buffered)

    def queue_allowance(self, spec: Expert) -> float:
        """Seconds a request may wait in the scheduler's queue before its expert starts on it.

        With `residency`, a hosted expert's request waits for its batch and, when the expert is
        not loaded, for a swap; the policy bounds that wait by about `max_wait_s` plus a batch
        and a swap. That much is added to the first-token and answer deadlines, which otherwise
        would count an engine load (30-90 s on vLLM CPU) as a dead expert."""
        r = self.registry.residency
        if r is None or spec.backend != "vllm":
            return 0.0
        return r.max_wait_s + 2 * r.swap_cost_s

    async def attempt(self, expert: str, request: ExpertRequest) -> AsyncIterator[Delta]:
        """One try on one expert, with the per-stage deadlines: first token, then the whole answer."""
        spec = self.registry.expert(expert)
        queued = self.queue_allowance(spec)
        total = spec.timeout_s + queued
        first = min(self.registry.router.first_token_timeout_s or spec.timeout_s, spec.timeout_s)
        first += queued
        loop = asyncio.get_running_loop()
        start = loop.time()
        iterator = aiter(self.clients[expert].stream_chat(request))
        seen = False
        try:
            while True:
                deadline = start + (total if seen else first)
                try:
                    async with asyncio.timeout_at(deadline):
                        delta = await anext(iterator)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    stage, limit = ("answer", total) if seen else ("first token", first)
                    field = "timeout_s" if seen else "router.first_token_timeout_s"
                    if queued:
                        field += " + the residency queue allowance"
                    raise ExpertTimeoutError(
                        f"expert '{expert}' gave no {stage} within {limit:g}s (registry: {field})"
                    ) from None
                except (
                    QuorumError
                ):  # typed already (e.g. the prompt is too long: a 400, no fallback)
                    raise
                except Exception as exc:  # a client broke its contract; treat as unavailable
                    raise ExpertUnavailableError(
                        f"expert '{expert}' failed: {type(exc).__name__}"
                    ) from None
                seen = True
                yield delta
            if not seen:
                raise ExpertError(f"expert '{expert}' closed its stream without answering")
        finally:
            close = getattr(iterator, "aclose", None)
            if close is not None:
                await close()
