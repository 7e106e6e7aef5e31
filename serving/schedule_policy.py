"""The scheduling policy: a snapshot of the experts in, actions out (plain, deterministic code).

`Policy.plan(now, experts, slots)` looks at one `ExpertView` per expert and returns actions
(`Dispatch`, `Swap`) plus the time it next wants to be asked. The live `serving.schedule.Scheduler`
and the simulator (`benchmarks/sched_sim.py`) both call it, and both keep their per-expert state
in `ExpertState`, so the simulated numbers are the numbers of this code.

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

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from experts.config import Residency

__all__ = ["POLICIES", "BatchByExpertPolicy", "Dispatch", "ExpertState", "ExpertView",
           "FifoPolicy", "Plan", "Policy", "SchedulerConfig", "Swap"]  # fmt: skip


#: The scheduler's settings are the registry's `residency` section itself (its defaults and
#: documentation are there); `SchedulerConfig(...)` builds one for tests and the simulator.
SchedulerConfig = Residency


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


@dataclass
class ExpertState:
    """One expert's queue and residency, kept by the live scheduler and by the simulator alike.

    Queue items are anything with an `enqueued` time (a live request, a simulated arrival).
    """

    name: str
    queue: deque = field(default_factory=deque)
    resident: bool = False
    loading: bool = False
    inflight: int = 0  # batches running
    loaded_at: float = 0.0
    last_used: float = 0.0
    served: int = 0  # batches dispatched since it was loaded

    def view(self) -> ExpertView:
        return ExpertView(self.name, tuple(j.enqueued for j in self.queue), self.resident,
                          self.loading, self.inflight, self.loaded_at, self.last_used,
                          self.served)  # fmt: skip

    def take(self, n: int) -> list[Any]:
        """Start a batch of the `n` oldest queued items (fewer if fewer are queued)."""
        return [self.queue.popleft() for _ in range(min(n, len(self.queue)))]

    def dispatched(self, now: float) -> None:
        self.inflight += 1
        self.served += 1
        self.last_used = now

    def batch_done(self, now: float) -> None:
        self.inflight -= 1
        self.last_used = now

    def loaded(self, now: float) -> None:
        self.loading, self.resident, self.served = False, True, 0
        self.loaded_at = self.last_used = now
