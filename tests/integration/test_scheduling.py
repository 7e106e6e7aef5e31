"""The scheduler on real vLLM CPU engines: two experts (SmolLM2 under two names), one slot."""

from __future__ import annotations

import asyncio

import pytest

from benchmarks.scheduling import copies_registry
from experts.stream import ExpertRequest, collect
from serving.residency import SlotManager, VLLMEngineFactory
from serving.schedule import BatchByExpertPolicy, ScheduledExpertClient, Scheduler, SchedulerConfig

pytestmark = pytest.mark.integration


async def test_batch_by_expert_answers_every_request_with_one_load_per_expert():
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'quorum[cpu]')")
    registry = copies_registry(2)
    names = [e.name for e in registry.experts]
    cfg = SchedulerConfig(slots=1, max_batch_size=8, max_batch_wait_s=0.1, swap_cost_s=60.0)
    slots = SlotManager(VLLMEngineFactory(list(registry.experts)), 1)
    sched = Scheduler(BatchByExpertPolicy(cfg), slots, names)
    clients = {n: ScheduledExpertClient(n, sched) for n in names}
    order = ["smol-a", "smol-b", "smol-a", "smol-b", "smol-a", "smol-b"]
    try:
        answers = await asyncio.gather(*(
            collect(clients[e].stream_chat(ExpertRequest(
                f"r{i}", [{"role": "user", "content": f"Say the number {i}."}], max_tokens=8,
                temperature=0.0, seed=0)))
            for i, e in enumerate(order)
        ))  # fmt: skip
    finally:
        await sched.close()
    assert all(text.strip() and last.completion_tokens > 0 for text, last in answers)
    assert len(slots.swap_log) == 2  # each expert loaded once, its three requests in one batch
    assert sorted(size for _, size in sched.stats.batches) == [3, 3]
    assert slots.swap_log[1]["how"] == "shutdown+start"  # no sleep mode on vLLM's CPU build
