"""Below dispatch, with `residency`: schedule (batch by expert) in the expert pool's process.

A request routed to an expert waits in that expert's queue. A dispatcher sends batches to the
expert's engine, bounded in size (`max_batch_size`) and in how long a partial batch waits for
company (`max_batch_wait_s`). When more experts have work than there are slots (engines that fit
at once), the policy (`serving.schedule_policy`: batch-by-expert or the FIFO baseline) decides which
expert to load and which to evict; `SlotManager` (`serving.residency`) carries the swaps out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from experts.clients import ExpertClient
from experts.errors import ExpertError, ExpertUnavailableError, QuorumError
from experts.registry import parse_registry
from experts.stream import Delta, ExpertRequest
from serving.residency import SlotManager, VLLMEngineFactory
from serving.schedule_policy import (
    POLICIES,
    BatchByExpertPolicy,
    Dispatch,
    ExpertState,
    ExpertView,
    FifoPolicy,
    Plan,
    Policy,
    SchedulerConfig,
    Swap,
)

# The policy names are re-exported: callers configure a Scheduler from this one module.
__all__ = [
    "POLICIES",
    "BatchByExpertPolicy",
    "Dispatch",
    "ExpertPool",
    "ExpertView",
    "FifoPolicy",
    "Plan",
    "Policy",
    "ScheduledExpertClient",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerStats",
    "Swap",
    "scheduler_for",
]  # fmt: skip

log = logging.getLogger(__name__)


# -- observability ---------------------------------------------------------------------------------


@dataclass
class SchedulerStats:
    """What the scheduler did, kept in process (`Scheduler.snapshot()` reports it); `sink`
    functions (e.g. serving.metrics) get each event too."""

    batches: list[tuple[str, int]] = field(default_factory=list)  # (expert, size)
    swaps: list[tuple[str, str | None, float]] = field(default_factory=list)  # (in, out, seconds)
    waits: list[float] = field(default_factory=list)
    batch_times: list[tuple[int, float]] = field(default_factory=list)  # (size, seconds)
    sink: Any = None  # object with record_batch/record_swap/record_queue_wait/set_queue_depth

    def _emit(self, method: str, *args: Any) -> None:
        fn = getattr(self.sink, method, None) if self.sink is not None else None
        if fn is not None:
            try:
                fn(*args)
            except Exception:  # metrics must never break serving
                log.debug("metrics sink %s failed", method, exc_info=True)

    def batch(self, expert: str, size: int, waits: list[float]) -> None:
        self.batches.append((expert, size))
        self.waits.extend(waits)
        self._emit("record_batch", expert, size)
        for w in waits:
            self._emit("record_queue_wait", expert, w)

    def batch_done(self, expert: str, size: int, seconds: float) -> None:
        self.batch_times.append((size, seconds))

    def swap(self, load: str, evict: str | None, seconds: float) -> None:
        self.swaps.append((load, evict, seconds))
        self._emit("record_swap", load, seconds)

    def depth(self, expert: str, n: int) -> None:
        self._emit("set_queue_depth", expert, n)


# -- the live scheduler ----------------------------------------------------------------------------

_END = object()


@dataclass
class _Job:
    request: ExpertRequest
    enqueued: float
    out: asyncio.Queue = field(default_factory=asyncio.Queue)
    task: asyncio.Task | None = None
    cancelled: bool = False


class Scheduler:
    """Per-expert queues in front of a `SlotManager`, driven by a `Policy`.

    `submit(expert, request)` streams that request's `Delta`s once its batch runs (the
    `ExpertClient` contract). Call `start()` on the event loop that will serve, `close()` at the
    end (it shuts the engines down).
    """

    def __init__(
        self,
        policy: Policy,
        slots: SlotManager,
        experts: Sequence[str],
        stats: SchedulerStats | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.slots = slots
        self.stats = stats or SchedulerStats()
        self.clock = clock
        self._experts = {name: ExpertState(name) for name in experts}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.slots.close()

    def snapshot(self) -> dict[str, Any]:
        """Queue depth and oldest wait per expert, residency, and totals (for /metrics or logs)."""
        now = self.clock()
        return {
            "policy": self.policy.name,
            "experts": {n: {"queued": len(e.queue), "resident": e.resident, "loading": e.loading,
                            "oldest_wait_s": round(now - e.queue[0].enqueued, 3) if e.queue else 0.0,
                            "inflight_batches": e.inflight}
                        for n, e in self._experts.items()},
            "batches": len(self.stats.batches), "swaps": len(self.stats.swaps),
        }  # fmt: skip

    async def submit(self, expert: str, request: ExpertRequest) -> AsyncIterator[Delta]:
        state = self._experts.get(expert)
        if state is None:
            raise ExpertUnavailableError(f"expert '{expert}' is not managed by this scheduler")
        self.start()
        job = _Job(request, self.clock())
        state.queue.append(job)
        self.stats.depth(expert, len(state.queue))
        self._wake.set()
        try:
            while True:
                item = await job.out.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:  # the consumer went away or the answer ended
            job.cancelled = True
            if job in state.queue:
                state.queue.remove(job)
                self.stats.depth(expert, len(state.queue))
            if job.task is not None and not job.task.done():
                job.task.cancel()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            now = self.clock()
            try:
                plan = self.policy.plan(now, [e.view() for e in self._experts.values()],
                                        self.slots.slots)  # fmt: skip
                for action in plan.actions:
                    if isinstance(action, Dispatch):
                        self._dispatch(action, now)
                    else:
                        self._swap(action)
            except Exception:  # a policy bug must not stop every queue for good
                log.exception("scheduler policy %s failed; retrying in 1 s", self.policy.name)
                plan = Plan([], now + 1.0)
            timeout = None if plan.wake_at is None else max(plan.wake_at - self.clock(), 0.001)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _dispatch(self, action: Dispatch, now: float) -> None:
        state = self._experts[action.expert]
        jobs = state.take(action.size)
        if not jobs:
            return
        state.dispatched(now)
        self.stats.depth(state.name, len(state.queue))
        self.stats.batch(state.name, len(jobs), [now - j.enqueued for j in jobs])
        self._spawn(self._run_batch(state, jobs))

    async def _run_batch(self, state: ExpertState, jobs: list[_Job]) -> None:
        t0 = self.clock()
        try:
            engine = self.slots.engine(state.name)
            for job in jobs:
                job.task = asyncio.get_running_loop().create_task(self._run_job(engine, job))
            await asyncio.gather(*(j.task for j in jobs), return_exceptions=True)
        finally:
            state.batch_done(self.clock())
            self.stats.batch_done(state.name, len(jobs), state.last_used - t0)
            self._wake.set()

    async def _run_job(self, engine: Any, job: _Job) -> None:
        try:
            async for delta in engine.stream_request(job.request):
                job.out.put_nowait(delta)
        except QuorumError as exc:  # typed already (the prompt is too long: a 400)
            job.out.put_nowait(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("request %s failed in its batch", job.request.request_id)
            job.out.put_nowait(ExpertError(f"expert failed: {type(exc).__name__}: {exc}"[:400]))
        finally:
            job.out.put_nowait(_END)

    def _swap(self, action: Swap) -> None:
        load = self._experts[action.load]
        load.loading = True
        if action.evict is not None:
            self._experts[action.evict].resident = False
        self._spawn(self._do_swap(load, action.evict))

    async def _do_swap(self, load: ExpertState, evict: str | None) -> None:
        t0 = self.clock()
        try:
            await self.slots.swap(load.name, evict)
        except Exception as exc:
            log.exception("could not load expert %s", load.name)
            error = ExpertUnavailableError(
                f"expert '{load.name}' could not be loaded: {type(exc).__name__}: {exc}"[:400]
            )
            while load.queue:
                load.queue.popleft().out.put_nowait(error)
            return
        finally:
            load.loading = False
            self._wake.set()
        load.loaded(self.clock())
        self.stats.swap(load.name, evict, load.loaded_at - t0)


class ScheduledExpertClient(ExpertClient):
    """An `ExpertClient` whose requests go through the scheduler's queue for `name`."""

    def __init__(self, name: str, scheduler: Scheduler) -> None:
        self.name = name
        self.scheduler = scheduler

    def stream_chat(self, request: ExpertRequest) -> AsyncIterator[Delta]:
        return self.scheduler.submit(self.name, request)


def scheduler_for(registry: Any, factory: Any = None, sink: Any = None) -> Scheduler:
    """The scheduler of a registry with a `residency` section, over its hosted (vllm) experts."""
    r = registry.residency
    hosted = [e for e in registry.experts if e.backend == "vllm"]
    slots = SlotManager(factory or VLLMEngineFactory(hosted), r.slots, r.max_sleeping)
    return Scheduler(POLICIES[r.policy](r), slots, [e.name for e in hosted],
                     SchedulerStats(sink=sink))  # fmt: skip


class ExpertPool:
    """Every hosted expert of a registry with `residency`, in `residency.slots` slots behind the
    scheduler: what the expert-pool deployment runs (`serving/deployments.py` wires it; one
    replica owns the device pool). `PoolExpertClient` (experts/clients.py) calls it."""

    def __init__(self, registry: dict[str, Any]) -> None:
        try:
            from serving import metrics as sink  # record_batch, record_swap, ...
        except ImportError:
            sink = None
        self.scheduler = scheduler_for(parse_registry(registry), sink=sink)

    async def stream_chat(self, expert: str, request: ExpertRequest) -> AsyncIterator[Delta]:
        async for delta in self.scheduler.submit(expert, request):
            yield delta

    async def snapshot(self) -> dict[str, Any]:
        return self.scheduler.snapshot()
