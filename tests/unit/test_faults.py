"""Expert faults through the real HTTP API: retry, fallback along the recruitment ranking, circuit
breakers with cool-down and probe. Experts are scripted clients passed through the constructor."""

import asyncio
import json

from fastapi.testclient import TestClient

from experts.errors import ExpertError, ExpertUnavailableError
from experts.registry import parse_registry
from experts.stream import ExpertRequest
from router import Router
from router.classify import CentroidHead, EmbeddingSkillClassifier
from serving.dispatch import CircuitBreaker, FaultPolicy, fallback_order
from serving.ingress import create_api
from serving.pipeline import Pipeline
from skills.store import InMemoryStateStore
from tests.conftest import KeywordEncoder
from tests.fakes import FakeExpert


def registry(**faults):
    return parse_registry({
        "skills": ["law", "math"],
        "router": {"first_token_timeout_s": 0.3,
                   "faults": {"retries": 1, "breaker_failures": 2, "breaker_cooldown_s": 10,
                              **faults}},
        "experts": [
            {"name": "best", "model": "m1", "skills": {"math": 0.9, "law": 0.1}},
            {"name": "second", "model": "m2", "skills": {"math": 0.6, "law": 0.1}},
            {"name": "third", "model": "m3", "skills": {"math": 0.3, "law": 0.1}},
        ],
    })  # fmt: skip


def expert(name: str, fail: int = 0, after: int = 0, delay: float = 0.0) -> FakeExpert:
    """Answers '<name> ok' then an empty "stop" delta (3 + 2 tokens); fails its first `fail` calls
    as unavailable (before any token, or after `after` 'tok ' deltas); sleeps `delay` s first
    (30: stalled)."""
    return FakeExpert(name, f"{name} ok", prompt_tokens=3, completion_tokens=2, fail=fail,
                      error=ExpertUnavailableError(f"expert '{name}' failed: replica died"),
                      fail_after=after, delay=delay)  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(experts: dict[str, FakeExpert], clock: Clock | None = None, **faults):
    reg = registry(**faults)
    encoder = KeywordEncoder()
    head = CentroidHead(["law", "math"], encoder.encode(["court judge", "solve equation x"]), 0.05)
    router = Router(EmbeddingSkillClassifier(encoder, head), reg, InMemoryStateStore())

    async def route(text, model):
        return router.route(text, model)

    seen: list[tuple[str, str, str]] = []
    policy = FaultPolicy(experts, reg, on_fallback=lambda *a: seen.append(a),
                         clock=clock or Clock(), retry_delay_s=0)  # fmt: skip
    service = Pipeline(reg, route, experts, faults=policy)
    return TestClient(create_api(service)), policy, seen


def ask(client, model="auto", stream=False):
    return client.post("/v1/chat/completions", json={
        "model": model, "stream": stream,
        "messages": [{"role": "user", "content": "solve the equation for x"}]})  # fmt: skip


def healthy(*names):
    return {n: expert(n) for n in names}


def test_fallback_order_is_the_choice_then_every_candidate_by_utility():
    scores = [{"expert": e} for e in ["b", "a", "c"]]
    assert fallback_order(["b"], {"scores": scores}) == ["b", "a", "c"]
    assert fallback_order(["x"], None) == ["x"]


def test_breaker_opens_after_consecutive_failures_and_probes_once_after_cooldown():
    clock = Clock()
    b = CircuitBreaker(failures_to_open=2, cooldown_s=10, clock=clock)
    b.failure()
    b.success()  # a success resets the count
    b.failure()
    assert b.state == "closed" and b.allow()
    b.failure()
    assert b.state == "open" and not b.allow()
    clock.now += 10
    assert b.state == "half_open"
    assert b.allow() and not b.allow()  # one probe at a time
    b.failure()  # probe failed: open again for a full cool-down
    assert b.state == "open"
    clock.now += 10
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.allow() and b.allow()


def test_dead_replica_is_retried_and_answers_without_fallback():
    experts = healthy("second", "third") | {"best": expert("best", fail=1)}
    client, _policy, seen = make(experts)
    r = ask(client)
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "best" and experts["best"].calls == 2
    assert body["quorum"]["routing"]["fallbacks"] == [] and seen == []
    assert "x-quorum-fallbacks" not in r.headers


def test_failing_expert_falls_back_to_the_next_best_and_says_so():
    experts = healthy("second", "third") | {"best": expert("best", fail=99)}
    client, _policy, seen = make(experts)
    r = ask(client)
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "second"
    assert body["choices"][0]["message"]["content"] == "second ok"
    assert body["quorum"]["routing"]["experts"] == ["best"]  # what the router chose
    assert body["quorum"]["routing"]["fallbacks"] == [
        {"from": "best", "to": "second", "reason": "expert_unavailable"}
    ]
    assert r.headers["x-quorum-expert"] == "second" and r.headers["x-quorum-fallbacks"] == "1"
    assert seen == [("best", "second", "expert_unavailable")]
    assert experts["best"].calls == 2  # 1 try + 1 retry


def test_streaming_fallback_reports_it_in_the_first_chunk():
    experts = healthy("second", "third") | {"best": expert("best", fail=99)}
    client, _, _ = make(experts)
    r = ask(client, stream=True)
    assert r.status_code == 200
    chunks = [json.loads(e[6:]) for e in r.text.split("\n\n") if e and e != "data: [DONE]"]
    assert chunks[0]["model"] == "second"
    assert chunks[0]["quorum"]["routing"]["fallbacks"][0]["to"] == "second"
    assert "second ok" in "".join(c["choices"][0]["delta"].get("content", "") for c in chunks
                                  if c["choices"])  # fmt: skip


def test_open_breaker_keeps_traffic_away_then_a_probe_brings_the_expert_back():
    clock = Clock()
    experts = healthy("second", "third") | {"best": expert("best", fail=2)}
    client, policy, _seen = make(experts, clock)
    assert ask(client).json()["model"] == "second"  # 2 failures: breaker opens
    assert policy.states()["best"] == "open"
    for _ in range(3):
        r = ask(client)
        assert r.json()["model"] == "second"
        assert r.json()["quorum"]["routing"]["fallbacks"] == [
            {"from": "best", "to": "second", "reason": "circuit_open"}
        ]
    assert experts["best"].calls == 2  # not called while open
    clock.now += 10  # cool-down over: the next request probes; the expert has recovered
    r = ask(client)
    assert r.json()["model"] == "best" and r.json()["quorum"]["routing"]["fallbacks"] == []
    assert policy.states()["best"] == "closed"
    assert policy.fallback_counts[("best", "second", "circuit_open")] == 3


def test_every_expert_open_still_tries_them_rather_than_refusing():
    experts = {n: expert(n, fail=2) for n in ["best", "second", "third"]}
    client, policy, _ = make(experts, max_fallbacks=2)
    r = ask(client)
    assert r.status_code == 503  # all failed twice → all open
    assert set(policy.states().values()) == {"open"}
    r = ask(client)  # every breaker open: they are tried anyway, and have recovered
    assert r.status_code == 200 and r.json()["model"] == "best"


def test_first_token_timeout_falls_back_with_reason():
    experts = healthy("second", "third") | {"best": expert("best", delay=30)}
    client, _, seen = make(experts, retries=0)
    r = ask(client)
    assert r.status_code == 200 and r.json()["model"] == "second"
    assert seen == [("best", "second", "expert_timeout")]


def test_named_expert_is_retried_but_never_swapped():
    experts = healthy("second", "third") | {"best": expert("best", fail=99)}
    client, _, seen = make(experts)
    r = ask(client, model="best")
    assert r.status_code == 503 and r.json()["error"]["code"] == "expert_unavailable"
    assert experts["second"].calls == 0 and seen == []


def test_fallback_off_and_max_fallbacks_are_honoured():
    experts = {n: expert(n, fail=99) for n in ["best", "second"]} | healthy("third")
    client, _, _ = make(experts, max_fallbacks=1)
    assert ask(client).status_code == 503  # third is beyond max_fallbacks
    assert experts["third"].calls == 0
    client, _, _ = make(healthy("second", "third") | {"best": expert("best", fail=99)},
                        fallback=False)  # fmt: skip
    assert ask(client).status_code == 503


def test_failure_after_the_first_token_is_not_retried_and_counts_against_the_breaker():
    experts = healthy("second", "third") | {"best": expert("best", fail=99, after=1)}
    client, policy, seen = make(experts)
    with client.stream("POST", "/v1/chat/completions", json={
        "model": "auto", "stream": True,
        "messages": [{"role": "user", "content": "solve the equation for x"}]}) as r:  # fmt: skip
        raw = "".join(r.iter_text())
    last = json.loads([e for e in raw.split("\n\n") if e][-1][6:])
    assert last["error"]["code"] == "expert_unavailable"
    assert experts["best"].calls == 1 and experts["second"].calls == 0 and seen == []
    assert policy.breaker("best").failures == 1


def test_a_broken_metrics_hook_does_not_fail_the_request():
    experts = healthy("second", "third") | {"best": expert("best", fail=99)}
    client, policy, _ = make(experts)

    def broken(*_):
        raise RuntimeError("metrics backend down")

    policy.on_fallback = broken
    assert ask(client).status_code == 200


def test_expert_error_types_map_to_their_status():
    bad = FakeExpert("best", error=ExpertError("boom"))
    client, _, _ = make(healthy("second", "third") | {"best": bad})
    assert ask(client, model="best").status_code == 502


def test_non_streaming_answer_that_breaks_midway_is_retried_whole():
    experts = healthy("second", "third") | {"best": expert("best", fail=1, after=2)}
    client, _, seen = make(experts)
    r = ask(client)
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "best ok"  # no 'tok tok' remnants
    assert experts["best"].calls == 2 and seen == []


def test_a_timeout_is_not_retried_on_a_single_replica_expert():
    experts = healthy("second", "third") | {"best": expert("best", delay=30)}
    client, _, seen = make(experts)  # retries=1, but 'best' has one replica
    r = ask(client)
    assert r.status_code == 200 and experts["best"].calls == 1
    assert seen == [("best", "second", "expert_timeout")]


def test_a_half_open_expert_keeps_its_probe_slot_when_a_better_expert_answers():
    clock = Clock()
    experts = healthy("best", "second", "third")
    client, policy, _ = make(experts, clock)
    policy.breaker("second").failure()
    policy.breaker("second").failure()
    clock.now += 10  # half-open
    assert ask(client).json()["model"] == "best"  # never reached 'second'
    assert policy.breaker("second").allow()  # so its probe is still available


def test_residency_queueing_is_not_a_first_token_timeout():
    # A hosted expert behind the scheduler waits for its batch or a swap before any token: the
    # deadlines allow max_wait_s + 2 x swap_cost_s on top of the first-token limit.
    queued = parse_registry(registry().model_dump(mode="json") | {
        "residency": {"slots": 1, "max_wait_s": 0.4, "swap_cost_s": 0.2}})  # fmt: skip
    plain = registry()
    for reg, status in ((queued, 200), (plain, 504)):
        # 0.6 s of engine load before any token: longer than first_token_timeout_s (0.3)
        policy = FaultPolicy({"best": expert("best", delay=0.6)}, reg, retry_delay_s=0)
        assert policy.queue_allowance(reg.expert("best")) == (0.8 if reg is queued else 0.0)
        request = ExpertRequest("r", [{"role": "user", "content": "x"}], max_tokens=4)

        async def run(p=policy, r=request):
            return [d.text async for d in p.attempt("best", r)]

        try:
            assert asyncio.run(run()) == ["best ok", ""]
            got = 200
        except ExpertError as exc:
            got = exc.status
            assert "first token within 0.3s" in exc.message
        assert got == status
