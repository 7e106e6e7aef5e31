"""Scheduler policy, live scheduler on fake engines, slot manager, simulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from benchmarks.sched_sim import Arrival, Costs, simulate
from experts.errors import ExpertUnavailableError
from experts.stream import Delta, ExpertRequest, collect
from serving.residency import EngineFactory, SlotManager
from serving.schedule import (
    BatchByExpertPolicy,
    Dispatch,
    ExpertView,
    FifoPolicy,
    ScheduledExpertClient,
    Scheduler,
    SchedulerConfig,
    Swap,
)

CFG = SchedulerConfig(slots=1, max_batch_size=4, max_batch_wait_s=0.5, max_wait_s=100.0,
                      swap_cost_s=10.0, min_residency_factor=1.0)  # fmt: skip


def view(name: str, waits=(), resident=False, inflight=0, loaded_at=0.0, last_used=0.0, served=1):
    return ExpertView(name, tuple(waits), resident, False, inflight, loaded_at, last_used, served)


# -- policy ------------------------------------------------------------------------------------


def test_free_slot_goes_to_the_expert_with_most_work():
    plan = BatchByExpertPolicy(CFG).plan(5.0, [view("a", [1.0]), view("b", [2, 3, 4])], slots=1)
    assert plan.actions == [Swap("b", None)]


def test_idle_resident_is_evicted_at_once_busy_one_keeps_its_slot_until_min_residency():
    pol = BatchByExpertPolicy(CFG)
    idle = pol.plan(5.0, [view("a", resident=True, loaded_at=4.0), view("b", [1.0])], slots=1)
    assert idle.actions == [Swap("b", "a")]
    # `a` has work and was loaded 2 s ago (< 1 x 10 s swap cost): it keeps serving.
    busy = pol.plan(6.0, [view("a", [5.9], resident=True, loaded_at=4.0),
                          view("b", [1.0, 1.1, 1.2])], slots=1)  # fmt: skip
    assert busy.actions == [] and busy.wake_at == pytest.approx(6.4)  # a's batch wait ends
    later = pol.plan(15.0, [view("a", [14.0], resident=True, loaded_at=4.0),
                            view("b", [1.0, 1.1, 1.2])], slots=1)  # fmt: skip
    assert later.actions == [Swap("b", "a")]


def test_urgent_expert_drains_the_resident_then_swaps():
    pol = BatchByExpertPolicy(CFG)
    # b's request waited 101 s > max_wait_s; a is mid-batch with more queued: a gets no new batch.
    draining = pol.plan(101.0, [view("a", [100.0] * 8, resident=True, inflight=1, loaded_at=100.5),
                                view("b", [0.0])], slots=1)  # fmt: skip
    assert draining.actions == []
    swap = pol.plan(102.0, [view("a", [100.0] * 8, resident=True, loaded_at=100.5),
                            view("b", [0.0])], slots=1)  # fmt: skip
    assert swap.actions == [Swap("b", "a")]


def test_partial_batch_waits_full_batch_goes_now():
    pol = BatchByExpertPolicy(CFG)
    partial = pol.plan(1.2, [view("a", [1.0, 1.1], resident=True)], slots=1)
    assert partial.actions == [] and partial.wake_at == pytest.approx(1.5)
    assert pol.plan(1.5, [view("a", [1.0, 1.1], resident=True)], 1).actions == [Dispatch("a", 2)]
    full = pol.plan(1.2, [view("a", [1.0] * 6, resident=True)], slots=1)
    assert full.actions == [Dispatch("a", 4)]


def test_fifo_dispatches_one_request_and_blocks_behind_a_swap():
    pol = FifoPolicy(CFG)
    head_b = pol.plan(5.0, [view("a", [2.0, 3.0], resident=True), view("b", [1.0])], slots=1)
    assert head_b.actions == [Swap("b", "a")]
    head_a = pol.plan(5.0, [view("a", [1.0, 3.0], resident=True), view("b", [2.0])], slots=1)
    assert head_a.actions == [Dispatch("a", 1)]


# -- simulator ---------------------------------------------------------------------------------


def _trace(n: int, experts: list[str], gap: float) -> list[Arrival]:
    return [Arrival(i * gap, experts[(i * 7 + i // 3) % len(experts)], "q", str(i)) for i in range(n)]


def test_simulator_batch_by_expert_beats_fifo_and_answers_everything():
    costs = Costs(swap_s=30.0, batch_s={1: 1.0, 8: 2.0, 32: 5.0})
    trace = _trace(400, ["a", "b", "c", "d"], gap=0.5)
    cfg = SchedulerConfig(slots=1, max_batch_size=32, swap_cost_s=30.0, max_wait_s=300.0)
    fifo = simulate(FifoPolicy(cfg), trace, 1, costs)
    batch = simulate(BatchByExpertPolicy(cfg), trace, 1, costs)
    assert fifo.answered == batch.answered == 400
    assert batch.throughput >= 3 * fifo.throughput
    assert batch.swaps < fifo.swaps / 5


def test_simulator_wait_bound_holds_under_overload():
    costs = Costs(swap_s=10.0, batch_s={1: 1.0, 16: 2.0})
    trace = _trace(600, [f"e{i}" for i in range(8)], gap=0.05)
    cfg = SchedulerConfig(slots=2, max_batch_size=16, swap_cost_s=10.0, max_wait_s=60.0)
    result = simulate(BatchByExpertPolicy(cfg), trace, 2, costs)
    # Bound: max_wait_s, then every expert urgent at once queues behind up to E/S swaps + batches.
    assert result.max_wait <= 60.0 + 4 * (10.0 + 2.0) + 2.0


# -- live scheduler on fake engines ---------------------------------------------------------------


class FakeEngine:
    def __init__(self, name: str, sleepable: bool, log: list[str]) -> None:
        self.name, self.supports_sleep, self.log = name, sleepable, log

    async def stream_request(self, request: ExpertRequest) -> AsyncIterator[Delta]:
        await asyncio.sleep(0.01)
        yield Delta(f"{self.name}:", None, 3, 1)
        yield Delta(request.messages[-1]["content"], "stop", 3, 2)

    async def sleep(self, level: int = 1) -> None:
        self.log.append(f"sleep {self.name}")

    async def wake_up(self) -> None:
        self.log.append(f"wake {self.name}")

    def shutdown(self) -> None:
        self.log.append(f"shutdown {self.name}")


class FakeFactory(EngineFactory):
    def __init__(self, sleepable: bool = False, fail: set[str] | None = None) -> None:
        self.log: list[str] = []
        self.sleepable, self.fail = sleepable, fail or set()

    async def start(self, expert: str) -> FakeEngine:
        await asyncio.sleep(0.05)
        if expert in self.fail:
            raise OSError("no memory")
        self.log.append(f"start {expert}")
        return FakeEngine(expert, self.sleepable, self.log)


def _req(i: int) -> ExpertRequest:
    return ExpertRequest(f"r{i}", [{"role": "user", "content": f"q{i}"}], max_tokens=4)


async def _run(policy_cls, order: list[str]):
    factory = FakeFactory()
    cfg = SchedulerConfig(slots=1, max_batch_size=8, max_batch_wait_s=0.02, swap_cost_s=0.05)
    sched = Scheduler(policy_cls(cfg), SlotManager(factory, 1), ["a", "b", "c"])
    clients = {n: ScheduledExpertClient(n, sched) for n in "abc"}
    texts = await asyncio.gather(*(collect(clients[e].stream_chat(_req(i)))
                                   for i, e in enumerate(order)))  # fmt: skip
    await sched.close()
    return [t for t, _ in texts], sched, factory


async def test_live_scheduler_groups_by_expert_and_answers_each_request_from_its_expert():
    order = ["a", "b", "c"] * 6
    texts, sched, factory = await _run(BatchByExpertPolicy, order)
    assert texts == [f"{e}:q{i}" for i, e in enumerate(order)]
    assert len(sched.stats.swaps) == 3  # each expert loaded once
    assert max(size for _, size in sched.stats.batches) > 1
    assert factory.log.count("shutdown a") == 1  # evicted engines are shut down (no sleep on CPU)
    fifo_texts, fifo, _ = await _run(FifoPolicy, order)
    assert fifo_texts == texts
    assert len(fifo.stats.swaps) == len(order)  # every request needs the other expert
    assert all(size == 1 for _, size in fifo.stats.batches)


async def test_sleeping_engine_is_woken_instead_of_restarted():
    factory = FakeFactory(sleepable=True)
    slots = SlotManager(factory, slots=1, max_sleeping=1)
    await slots.swap("a", None)
    await slots.swap("b", "a")
    await slots.swap("a", "b")
    assert factory.log == ["start a", "sleep a", "start b", "sleep b", "wake a"]
    assert [s["how"] for s in slots.swap_log] == ["start", "sleep+start", "sleep+wake"]
    await slots.close()


async def test_engine_that_fails_to_load_fails_its_requests_with_503():
    cfg = SchedulerConfig(slots=1, max_batch_wait_s=0.0)
    sched = Scheduler(BatchByExpertPolicy(cfg), SlotManager(FakeFactory(fail={"a"}), 1), ["a"])
    with pytest.raises(ExpertUnavailableError, match="could not be loaded"):
        await collect(sched.submit("a", _req(0)))
    await sched.close()


async def test_closing_a_queued_stream_removes_it_from_the_queue():
    cfg = SchedulerConfig(slots=1, max_batch_wait_s=10.0)  # nothing dispatches for 10 s
    sched = Scheduler(BatchByExpertPolicy(cfg), SlotManager(FakeFactory(), 1), ["a"])
    stream = sched.submit("a", _req(0))
    task = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.2)  # loaded, request queued, waiting for its batch
    assert sched.snapshot()["experts"]["a"]["queued"] == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await stream.aclose()
    assert sched.snapshot()["experts"]["a"]["queued"] == 0
    await sched.close()


async def test_admin_scheduler_endpoint_shows_queues_and_totals():
    import httpx

    from experts.registry import parse_registry
    from router import RoutingDecision
    from serving.ingress import create_api
    from serving.pipeline import Pipeline

    registry = parse_registry({"skills": ["law", "math"],
                               "experts": [{"name": n, "model": "m"} for n in "ab"]})  # fmt: skip
    cfg = SchedulerConfig(slots=1, max_batch_size=8, max_batch_wait_s=0.02, swap_cost_s=0.05)
    sched = Scheduler(BatchByExpertPolicy(cfg), SlotManager(FakeFactory(), 1), ["a", "b"])

    async def route(text: str, model: str) -> RoutingDecision:
        return RoutingDecision(model, [model], [], None, None)

    async def snapshot() -> dict:
        return sched.snapshot()

    service = Pipeline(registry, route, {n: ScheduledExpertClient(n, sched) for n in "ab"})
    transport = httpx.ASGITransport(app=create_api(service, scheduler=snapshot))
    plain = httpx.ASGITransport(app=create_api(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://q") as c:
        bodies = [{"model": m, "messages": [{"role": "user", "content": "hi"}]} for m in "aab"]
        answers = await asyncio.gather(*(c.post("/v1/chat/completions", json=b) for b in bodies))
        assert [r.status_code for r in answers] == [200, 200, 200]
        state = (await c.get("/admin/scheduler")).json()
    assert state["policy"] == "batch" and state["swaps"] == 2 and state["batches"] == 2
    assert {n: e["queued"] for n, e in state["experts"].items()} == {"a": 0, "b": 0}
    async with httpx.AsyncClient(transport=plain, base_url="http://q") as c:
        missing = await c.get("/admin/scheduler")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "scheduler_not_configured"
    await sched.close()
