"""Stage 4 of the pipeline: schedule (batch by expert), with expert residency.

A request routed to an expert waits in that expert's queue. A dispatcher sends batches to the
expert's engine, bounded in size (`max_batch_size`) and in how long a partial batch waits for
company (`max_batch_wait_s`). When more experts have work than there are slots (engines that fit
at once), the policy decides which expert to load and which to evict.

The policy is plain code: `Policy.plan(now, experts, slots)` looks at a snapshot (`ExpertView`
per expert) and returns actions (`Dispatch`, `Swap`) plus the time it next wants to be asked.
The live `Scheduler` below and the simulator (`benchmarks/sched_sim.py`) both call it, so the
simulated numbers are the numbers of this code.

`BatchByExpertPolicy` (Symbolic-MoE's grouping, online): a loaded expert keeps its slot while it
has work; a slot goes to the waiting expert with the most queued work plus age (age counted in
units of the swap cost), once the resident has held the slot for at least
`min_residency_factor` × swap cost (a swap must buy more work than it costs) — or at once when
it has nothing queued. A request that has waited `max_wait_s` makes its expert urgent: urgent
experts take the next slot that comes free at a batch boundary, oldest first, which bounds any
request's wait to about `max_wait_s` + one batch + one swap (per urgent expert ahead of it).

`FifoPolicy` is the baseline: requests leave in arrival order, one request per dispatch; a
request for an expert that is not loaded blocks the line until a slot drains and swaps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from experts.engine import ContextLengthError, Delta
from experts.errors import (
    ContextLengthExceededError,
    ExpertError,
    ExpertUnavailableError,
    QuorumError,
)
from serving.engines import ExpertClient, ExpertRequest
from serving.residency import SlotManager

__all__ = ["POLICIES", "BatchByExpertPolicy", "Dispatch", "ExpertView", "FifoPolicy", "Plan",
           "Policy", "ScheduledExpertClient", "Scheduler", "SchedulerConfig", "SchedulerStats",
           "Swap"]  # fmt: skip

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SchedulerConfig:
    """Knobs of the scheduler and its policy (the registry's `residency` section fills them)."""

    slots: int = 1  # experts loaded at once
    max_batch_size: int = 16
    max_batch_wait_s: float = 0.05  # a partial batch waits this long for more requests
    max_wait_s: float = 300.0  # a request older than this makes its expert urgent
    swap_cost_s: float = 40.0  # evict + load, measured (benchmarks/RESULTS.md)
    min_residency_factor: float = 1.0  # hold a slot >= this x swap cost while there is work
    max_inflight_batches: int = 1  # per expert


# -- the policy: a snapshot in, actions out --------------------------------------------------------


@dataclass(frozen=True)
class ExpertView:
    """One expert as the policy sees it. `waits` are enqueue times of its queued requests, oldest
    first; `resident`: loaded and serving; `loading`: a swap is bringing it in."""

    name: str
    waits: tuple[float, ...] = ()
    resident: bool = False
    loading: bool = False
    inflight: int = 0  # batches running
    loaded_at: float = 0.0
    last_used: float = 0.0
    served: int = 0  # batches dispatched since it was loaded

    @property
    def queued(self) -> int:
        return len(self.waits)

    @property
    def holds_slot(self) -> bool:
        return self.resident or self.loading


@dataclass(frozen=True)
class Dispatch:
    """Send the `size` oldest queued requests of `expert` to its engine as one batch."""

    expert: str
    size: int


@dataclass(frozen=True)
class Swap:
    """Load `load` into a slot, evicting `evict` first (None: a free slot)."""

    load: str
    evict: str | None


@dataclass(frozen=True)
class Plan:
    actions: list[Dispatch | Swap]
    wake_at: float | None  # ask again at this time even if nothing happens


class Policy(ABC):
    """Decides dispatches and swaps from a snapshot. Must be deterministic and side-effect free."""

    name: str

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config

    @abstractmethod
    def plan(self, now: float, experts: Sequence[ExpertView], slots: int) -> Plan:
        """The actions to take now."""


class BatchByExpertPolicy(Policy):
    """Group by expert, keep loaded experts while they have work, swap by work + age (see module)."""

    name = "batch"

    def _score(self, e: ExpertView, now: float) -> float:
        age = now - e.waits[0] if e.waits else 0.0
        return e.queued + age / max(self.config.swap_cost_s, 1e-9)

    def _urgent(self, e: ExpertView, now: float) -> bool:
        return bool(e.waits) and now - e.waits[0] >= self.config.max_wait_s

    def plan(self, now: float, experts: Sequence[ExpertView], slots: int) -> Plan:
        c = self.config
        actions: list[Dispatch | Swap] = []
        wake: list[float] = []
        free = slots - sum(e.holds_slot for e in experts)
        wanting = [e for e in experts if e.waits and not e.holds_slot]
        # Urgent first (oldest request first), then by queued work + age.
        wanting.sort(key=lambda e: (not self._urgent(e, now), e.waits[0] if self._urgent(e, now)
                                    else -self._score(e, now), e.name))  # fmt: skip
        victims = [e for e in experts if e.resident]
        draining: set[str] = set()
        min_hold = c.min_residency_factor * c.swap_cost_s
        for cand in wanting:
            if free > 0:
                actions.append(Swap(cand.name, None))
                free -= 1
                continue
            urgent = self._urgent(cand, now)
            eligible = []
            for v in victims:
                held = now - v.loaded_at
                if not v.waits or (urgent and v.served > 0):  # each load serves a batch
                    eligible.append(v)
                elif held >= min_hold and self._score(cand, now) > self._score(v, now):
                    eligible.append(v)
                else:
                    wake.append(v.loaded_at + min_hold)
            if not urgent:
                wake.append(cand.waits[0] + c.max_wait_s)
            if not eligible:
                continue
            # Idle experts first (least recently used), then the least work + age.
            victim = min(eligible, key=lambda v: (bool(v.waits), self._score(v, now), v.last_used))
            victims.remove(victim)
            draining.add(victim.name)  # dispatch nothing new to it
            if not victim.inflight:  # else: its batch finishes first, then it is swapped out
                actions.append(Swap(cand.name, victim.name))
        for e in experts:
            if not e.resident or not e.waits or e.name in draining:
                continue
            if e.inflight >= c.max_inflight_batches:
                continue
            full = e.queued >= c.max_batch_size
            due = e.waits[0] + c.max_batch_wait_s
            if full or now >= due:
                actions.append(Dispatch(e.name, min(e.queued, c.max_batch_size)))
            else:
                wake.append(due)
        future = [t for t in wake if t > now]
        return Plan(actions, min(future) if future else None)


class FifoPolicy(Policy):
    """Baseline: arrival order across experts, one request per dispatch, head-of-line blocking."""

    name = "fifo"

    def plan(self, now: float, experts: Sequence[ExpertView], slots: int) -> Plan:
        by_name = {e.name: e for e in experts}
        pos = {e.name: 0 for e in experts}
        inflight = {e.name: e.inflight for e in experts}
        actions: list[Dispatch | Swap] = []
        while True:
            heads = [(e.waits[pos[e.name]], e.name) for e in experts if pos[e.name] < e.queued]
            if not heads:
                break
            _, name = min(heads)
            e = by_name[name]
            if e.resident and inflight[name] < self.config.max_inflight_batches:
                actions.append(Dispatch(name, 1))
                pos[name] += 1
                inflight[name] += 1
                continue
            if not e.holds_slot:
                free = slots - sum(x.holds_slot for x in experts)
                idle = [x for x in experts if x.resident and inflight[x.name] == 0]
                if free > 0:
                    actions.append(Swap(name, None))
                elif idle:
                    actions.append(Swap(name, min(idle, key=lambda x: x.last_used).name))
            break  # the head of the line waits; nothing behind it may pass
        return Plan(actions, None)


POLICIES: dict[str, type[Policy]] = {"batch": BatchByExpertPolicy, "fifo": FifoPolicy}


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


@dataclass
class _Expert:
    name: str
    queue: deque[_Job] = field(default_factory=deque)
    resident: bool = False
    loading: bool = False
    inflight: int = 0
    loaded_at: float = 0.0
    last_used: float = 0.0
    served: int = 0

    def view(self) -> ExpertView:
        return ExpertView(self.name, tuple(j.enqueued for j in self.queue), self.resident,
                          self.loading, self.inflight, self.loaded_at, self.last_used,
                          self.served)  # fmt: skip


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
        self._experts = {name: _Expert(name) for name in experts}
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
        jobs = [state.queue.popleft() for _ in range(min(action.size, len(state.queue)))]
        if not jobs:
            return
        state.inflight += 1
        state.served += 1
        state.last_used = now
        self.stats.depth(state.name, len(state.queue))
        self.stats.batch(state.name, len(jobs), [now - j.enqueued for j in jobs])
        self._spawn(self._run_batch(state, jobs))

    async def _run_batch(self, state: _Expert, jobs: list[_Job]) -> None:
        t0 = self.clock()
        try:
            engine = self.slots.engine(state.name)
            for job in jobs:
                job.task = asyncio.get_running_loop().create_task(self._run_job(engine, job))
            await asyncio.gather(*(j.task for j in jobs), return_exceptions=True)
        finally:
            state.inflight -= 1
            state.last_used = self.clock()
            self.stats.batch_done(state.name, len(jobs), state.last_used - t0)
            self._wake.set()

    async def _run_job(self, engine: Any, job: _Job) -> None:
        r = job.request
        try:
            async for delta in engine.stream_chat(
                r.messages, max_tokens=r.max_tokens, temperature=r.temperature, top_p=r.top_p,
                stop=r.stop, seed=r.seed, request_id=r.request_id,
            ):  # fmt: skip
                job.out.put_nowait(delta)
        except QuorumError as exc:
            job.out.put_nowait(exc)
        except ContextLengthError as exc:
            job.out.put_nowait(ContextLengthExceededError(str(exc), param="messages"))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("request %s failed in its batch", r.request_id)
            job.out.put_nowait(ExpertError(f"expert failed: {type(exc).__name__}: {exc}"[:400]))
        finally:
            job.out.put_nowait(_END)

    def _swap(self, action: Swap) -> None:
        load = self._experts[action.load]
        load.loading = True
        if action.evict is not None:
            self._experts[action.evict].resident = False
        self._spawn(self._do_swap(load, action.evict))

    async def _do_swap(self, load: _Expert, evict: str | None) -> None:
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
        load.resident, load.served = True, 0
        load.loaded_at = load.last_used = self.clock()
        self.stats.swap(load.name, evict, load.loaded_at - t0)


class ScheduledExpertClient(ExpertClient):
    """An `ExpertClient` whose requests go through the scheduler's queue for `name`."""

    def __init__(self, name: str, scheduler: Scheduler) -> None:
        self.name = name
        self.scheduler = scheduler

    def stream_chat(self, request: ExpertRequest) -> AsyncIterator[Delta]:
        return self.scheduler.submit(self.name, request)


class PoolExpertClient(ExpertClient):
    """An expert served by the shared expert pool deployment (`serving.residency.ExpertPool`)."""

    def __init__(self, name: str, handle: Any) -> None:  # ray.serve.handle.DeploymentHandle
        self.name = name
        self._handle = handle.options(stream=True)

    async def stream_chat(self, request: ExpertRequest) -> AsyncIterator[Delta]:
        try:
            async for delta in self._handle.stream_chat.remote(self.name, request):
                yield delta
        except QuorumError:
            raise
        except Exception as exc:  # Ray wraps remote errors; a QuorumError is its cause
            cause = getattr(exc, "cause", None)
            if isinstance(cause, QuorumError):
                raise cause from None
            raise ExpertUnavailableError(
                f"expert '{self.name}' failed in the expert pool: {type(exc).__name__}: "
                f"{str(exc)[:300]}"
            ) from None


def scheduler_for(registry: Any, factory: Any = None, sink: Any = None) -> Scheduler:
    """The scheduler of a registry with a `residency` section, over its hosted (vllm) experts."""
    from serving.residency import VLLMEngineFactory

    r = registry.residency
    hosted = [e for e in registry.experts if e.backend == "vllm"]
    config = SchedulerConfig(slots=r.slots, max_batch_size=r.max_batch_size,
                             max_batch_wait_s=r.max_batch_wait_s, max_wait_s=r.max_wait_s,
                             swap_cost_s=r.swap_cost_s,
                             min_residency_factor=r.min_residency_factor)  # fmt: skip
    slots = SlotManager(factory or VLLMEngineFactory(hosted), r.slots, r.max_sleeping)
    return Scheduler(POLICIES[r.policy](config), slots, [e.name for e in hosted],
                     SchedulerStats(sink=sink))  # fmt: skip
