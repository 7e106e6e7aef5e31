"""Monitoring against the real service: requests through `quorum serve`, then Ray's Prometheus
endpoint (the address `quorum serve` prints) must show Quorum's metrics with the right labels and
counts, every metric the Grafana dashboard queries from the ingress must be exported, and the
routing audit must answer by request id. Plus the Redis audit stream on a real redis-server.

Ray flushes metrics every few seconds, so the checks poll. The service is shared with the other
integration modules, so counts are compared with a baseline taken (once it stopped changing)
before this module's requests.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from serving.metrics import METRICS, exported_names
from tests.integration.redis_fixture import redis_server, redis_url  # noqa: F401 (fixtures)
from tests.unit.test_grafana import dashboard_exprs, queried_series

# The first test also waits for the shared service to start: minutes on a loaded CPU machine.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

Sample = tuple[str, dict[str, str], float]


def metrics_url(log: Path, timeout: float = 900) -> str:
    """The endpoint `quorum serve` printed in its banner. /health answers once the ingress is up;
    the banner comes when every expert is, which can be minutes later on a loaded CPU machine."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"Metrics\s+(http://\S+/metrics)", log.read_text())
        if found:
            return found.group(1)
        time.sleep(0.5)
    raise AssertionError(f"`quorum serve` printed no metrics endpoint:\n{log.read_text()[-2000:]}")


def scrape(url: str) -> list[Sample]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url, timeout=10).text
    return [(s.name, s.labels, s.value)
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith("ray_quorum_")]  # fmt: skip


def total(samples: list[Sample], name: str, **labels: str) -> float:
    """Sum over every series of `name` whose labels include `labels` (all workers, all nodes)."""
    return sum(v for n, l, v in samples if n == name and labels.items() <= l.items())


def settled(url: str, wait_s: float = 6.0, timeout: float = 60) -> list[Sample]:
    """A scrape that equals the one `wait_s` before it: earlier requests are all flushed."""
    previous = scrape(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(wait_s)
        current = scrape(url)
        if sorted(current, key=repr) == sorted(previous, key=repr):
            return current
        previous = current
    return previous


def poll(url: str, check: Callable[[list[Sample]], None], timeout: float = 90) -> list[Sample]:
    """Scrape until `check` passes; its last AssertionError if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        try:
            check(samples)
            return samples
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(2)


@pytest.fixture(scope="module")
def traffic(quorum_default):
    """This module's requests, sent once: what was sent, what came back, and the baseline."""
    base, log = quorum_default
    url = metrics_url(log)
    before = settled(url)
    api = httpx.Client(base_url=base, timeout=300)
    math = {"messages": [{"role": "user", "content": "Solve 3x+5=11 for x."}], "max_tokens": 8,
            "temperature": 0}  # fmt: skip
    routed = [api.post("/v1/chat/completions", json={"model": "quality", **math}) for _ in range(2)]
    streamed = api.post("/v1/chat/completions", json={"model": "quality", "stream": True,
                        "stream_options": {"include_usage": True}, **math})  # fmt: skip
    # the other expert, named directly: its series must not mix with the routed ones
    other = next(e for e in ("gemma3-270m", "smollm2-135m") if e != routed[0].json()["model"])
    direct = api.post("/v1/chat/completions", json={"model": other, **math})
    unknown = api.post("/v1/chat/completions", json={"model": "no-such-model", **math})
    for r in [*routed, streamed, direct]:
        assert r.status_code == 200, r.text
    assert unknown.status_code == 404
    yield {"api": api, "url": url, "before": before, "routed": [r.json() for r in routed],
           "streamed": streamed, "direct": direct.json()}  # fmt: skip
    api.close()


def test_requests_are_counted_by_model_skill_expert_and_status(traffic):
    before, routed = traffic["before"], traffic["routed"]
    skill = routed[0]["quorum"]["routing"]["skills"][0]["skill"]
    expert = routed[0]["model"]
    assert all(r["model"] == expert for r in routed)  # same text, temperature 0: same route
    assert traffic["streamed"].headers["x-quorum-expert"] == expert
    direct = traffic["direct"]["model"]
    name = "ray_quorum_requests_total"
    cases = [
        ({"model": "quality", "skill": skill, "expert": expert, "status": "ok"}, 3),
        ({"model": direct, "skill": "none", "expert": direct, "status": "ok"}, 1),
        ({"model": "none", "expert": "none", "status": "model_not_found"}, 1),
    ]

    def check(samples):
        for labels, n in cases:
            got = total(samples, name, **labels) - total(before, name, **labels)
            assert got == n, f"{name}{labels}: {got}, expected {n}"
        got = total(samples, "ray_quorum_errors_total", type="model_not_found", expert="none")
        assert got - total(before, "ray_quorum_errors_total", type="model_not_found") == 1

    poll(traffic["url"], check)


def test_latency_histograms_count_each_request_once(traffic):
    before, expert = traffic["before"], traffic["routed"][0]["model"]

    def delta(samples, name, **labels):
        return total(samples, name, **labels) - total(before, name, **labels)

    def check(samples):
        for stage in ("classify", "recruit"):  # the three `quality` requests were classified
            assert delta(samples, "ray_quorum_routing_latency_seconds_count", stage=stage) == 3
        # `total` (seen from the ingress) includes the direct request; the unknown model has none
        assert delta(samples, "ray_quorum_routing_latency_seconds_count", stage="total") == 4
        assert delta(samples, "ray_quorum_time_to_first_token_seconds_count", expert=expert) == 3
        n = delta(samples, "ray_quorum_request_latency_seconds_count", expert=expert, status="ok")
        assert n == 3
        slow = delta(samples, "ray_quorum_request_latency_seconds_bucket", expert=expert, le="+Inf")
        assert slow == 3
        assert delta(samples, "ray_quorum_routing_confidence_count", model="quality") == 3
        # every ingress replica reports its in-flight count; all requests have ended
        assert total(samples, "ray_quorum_expert_inflight", expert=expert) == 0

    poll(traffic["url"], check)


def test_tokens_and_cost_per_expert_match_the_responses(traffic):
    from experts.registry import load_registry

    before, routed = traffic["before"], traffic["routed"]
    expert = routed[0]["model"]
    price = load_registry(None).expert(expert).cost
    # the streamed answer's usage comes in its last chunk; count the two whole answers exactly
    prompt = sum(r["usage"]["prompt_tokens"] for r in routed)
    completion = sum(r["usage"]["completion_tokens"] for r in routed)
    stream_usage = [line for line in traffic["streamed"].text.splitlines() if '"usage"' in line]
    import json

    usage = json.loads(stream_usage[-1].removeprefix("data: "))["usage"]
    prompt += usage["prompt_tokens"]
    completion += usage["completion_tokens"]

    def delta(samples, name, **labels):
        return total(samples, name, **labels) - total(before, name, **labels)

    def check(samples):
        assert delta(samples, "ray_quorum_tokens_total", expert=expert, direction="input") == prompt
        got = delta(samples, "ray_quorum_tokens_total", expert=expert, direction="output")
        assert got == completion
        cost = (prompt * price.input_per_1m + completion * price.output_per_1m) / 1e6
        assert delta(samples, "ray_quorum_cost_total", expert=expert) == pytest.approx(cost)

    poll(traffic["url"], check)


def test_every_ingress_metric_the_dashboard_queries_is_on_the_endpoint(traffic):
    """Checked against the live endpoint for what the ingress feeds; the scheduler's metrics
    (queue, batch, swaps, aggregation, fallbacks) appear once issue 4's scheduler records them and
    are checked against serving/metrics.py by tests/unit/test_grafana.py."""
    scheduler = {n for s in METRICS if s.fed_by == "scheduler" for n in exported_names(s)}
    queried = set().union(*(queried_series(e) for _, e in dashboard_exprs())) - scheduler

    def check(samples):
        exported = {name for name, _, _ in samples}
        assert queried <= exported, f"queried but not exported: {sorted(queried - exported)}"

    poll(traffic["url"], check)


def test_the_admin_endpoint_returns_the_routing_record(traffic):
    answer = traffic["routed"][0]
    record = traffic["api"].get(f"/admin/routing/{answer['id']}").json()
    routing = answer["quorum"]["routing"]
    assert record["request_id"] == answer["id"]
    assert record["skills"] == routing["skills"] and record["experts"] == routing["experts"]
    assert record["scores"] == routing["recruitment"]["scores"]
    assert record["outcome"]["status"] == "ok"
    assert record["outcome"]["completion_tokens"] == answer["usage"]["completion_tokens"]
    assert record["latency_ms"]["total"] >= record["latency_ms"]["first_token"] > 0
    missing = traffic["api"].get("/admin/routing/chatcmpl-unknown")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "routing_record_not_found"


# -- the Redis audit stream on a real redis-server (no Quorum needed) ---------------------------


def test_redis_audit_is_a_capped_stream_readable_by_request_id(redis_url):  # noqa: F811
    import redis

    from serving.audit import STREAM_KEY, RedisAuditLog

    log = RedisAuditLog.from_url(redis_url, maxlen=50)
    for i in range(400):
        log.append({"request_id": f"r{i}", "experts": ["a"], "outcome": {"status": "ok"}})
    assert log.flush() and log.dropped == 0
    assert log.get("r399") == {"request_id": "r399", "experts": ["a"], "outcome": {"status": "ok"}}
    assert log.get("r0") is None  # trimmed by MAXLEN ~ 50
    assert log.get("never") is None
    client = redis.Redis.from_url(redis_url)
    assert 50 <= client.xlen(STREAM_KEY) < 400
    assert 0 < client.ttl("quorum:audit:id:r399") <= log.index_ttl_s


def test_redis_audit_drops_records_instead_of_failing_when_redis_is_down():
    from experts.errors import QuorumError
    from serving.audit import RedisAuditLog
    from tests.integration.conftest import free_port

    log = RedisAuditLog.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    log.append({"request_id": "r1"})  # returns at once; the writer thread fails and counts it
    assert log.flush() and log.dropped == 1
    with pytest.raises(QuorumError, match="failed to read the routing audit"):
        log.get("r1")
