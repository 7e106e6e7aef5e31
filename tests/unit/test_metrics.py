"""Metrics through the real HTTP API and Pipeline, with a recording metric backend passed to
`QuorumMetrics` instead of Ray's (which needs a running cluster; tests/integration/test_metrics.py
checks the real endpoint)."""

from collections import defaultdict

import pytest
from fastapi.testclient import TestClient

from experts.errors import ExpertError, ModelNotFoundError
from experts.registry import parse_registry
from router import RoutingDecision
from serving import metrics as metrics_module
from serving.ingress import create_api
from serving.metrics import (
    METRICS,
    MetricSpec,
    QuorumMetrics,
    RayMetricsObserver,
    exported_names,
)
from serving.observe import FanOutObserver, Observer, RecordingObserver
from serving.pipeline import Pipeline
from tests.fakes import FakeExpert

REGISTRY = parse_registry({
    "skills": ["law", "math"],
    "experts": [
        {"name": "mathematician", "model": "m1", "cost": {"input_per_1m": 2.0, "output_per_1m": 8.0}},
        {"name": "jurist", "model": "m2"},
        {"name": "flaky", "model": "m3"},
    ],
})  # fmt: skip

PROMPT_TOKENS = 11


def scripted(name: str) -> FakeExpert:
    """Three words ('one', ' two', ' three'), then a last delta with token counts."""
    return FakeExpert(name, "one two three", words="leading", prompt_tokens=PROMPT_TOKENS,
                      completion_tokens=3, partial_tokens=(PROMPT_TOKENS, 0))  # fmt: skip


def failing() -> FakeExpert:
    """One 'tok' delta, then an expert failure."""
    return FakeExpert("flaky", error=ExpertError("expert 'flaky' failed: engine died"),
                      fail_after=1, fail_text="tok", partial_tokens=(PROMPT_TOKENS, 1))  # fmt: skip


def expert_clients() -> dict[str, FakeExpert]:
    return {"mathematician": scripted("mathematician"), "jurist": scripted("jurist"),
            "flaky": failing()}  # fmt: skip


async def route(text: str, model: str) -> RoutingDecision:
    """Law if the text mentions a judge, else math; an expert's name goes straight to it."""
    names = {e.name for e in REGISTRY.experts}
    if model in names:
        return RoutingDecision(model, [model], [], None, None)
    if model != "auto":
        raise ModelNotFoundError(f"model {model!r} does not exist")
    skill, expert = ("law", "jurist") if "judge" in text else ("math", "mathematician")
    return RoutingDecision(
        model=model,
        experts=[expert],
        skills=[{"skill": skill, "probability": 0.8}, {"skill": "other", "probability": 0.2}],
        confidence=0.4,
        recruitment={"experts": [expert], "scores": [{"expert": expert, "quality": 0.7,
                     "relative_cost": 0.5, "utility": 0.65}], "cost_weight": 0.1,
                     "competence_source": "registry", "aggregator": None},
        latency_ms={"classify": 3.0, "recruit": 0.5},
    )  # fmt: skip


def make_client(observer: Observer, audit=None) -> TestClient:
    return TestClient(create_api(Pipeline(REGISTRY, route, expert_clients(), observer), audit))


def chat(client: TestClient, text: str = "solve x", model: str = "auto", stream: bool = False):
    body = {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}
    return client.post("/v1/chat/completions", json=body)


class RecordedMetric:
    """Stands in for a ray.util.metrics object and enforces what Ray enforces: exactly the
    declared tag keys, string values, and the method that fits the kind."""

    def __init__(self, spec: MetricSpec) -> None:
        self.spec = spec
        self.calls: list[tuple[float, dict]] = []

    def _record(self, method: str, value: float, tags: dict) -> None:
        expected = {"counter": "inc", "histogram": "observe", "gauge": "set"}[self.spec.kind]
        assert method == expected, f"{self.spec.name} is a {self.spec.kind}"
        assert set(tags) == set(self.spec.tags), (self.spec.name, tags)
        assert all(isinstance(v, str) for v in tags.values()), tags
        self.calls.append((value, tags))

    def inc(self, value=1.0, tags=None):
        self._record("inc", value, tags or {})

    def observe(self, value, tags=None):
        self._record("observe", value, tags or {})

    def set(self, value, tags=None):
        self._record("set", value, tags or {})


class Recorder:
    """The backend: one RecordedMetric per spec, plus totals by label set."""

    def __init__(self) -> None:
        self.metrics: dict[str, RecordedMetric] = {}

    def __call__(self, spec: MetricSpec) -> RecordedMetric:
        self.metrics[spec.name] = RecordedMetric(spec)
        return self.metrics[spec.name]

    def total(self, name: str, **tags: str) -> float:
        return sum(v for v, t in self.metrics[name].calls if tags.items() <= t.items())

    def count(self, name: str, **tags: str) -> int:
        return sum(1 for _, t in self.metrics[name].calls if tags.items() <= t.items())

    def last(self, name: str, **tags: str) -> float:
        return [v for v, t in self.metrics[name].calls if tags.items() <= t.items()][-1]

    def by_labels(self, name: str) -> dict[tuple, float]:
        out: dict[tuple, float] = defaultdict(float)
        for v, t in self.metrics[name].calls:
            out[tuple(sorted(t.items()))] += v
        return dict(out)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def client(recorder: Recorder) -> TestClient:
    return make_client(RayMetricsObserver(REGISTRY, QuorumMetrics(recorder)))


def test_a_routed_request_is_counted_by_model_skill_expert_and_status(client, recorder):
    assert chat(client).status_code == 200
    assert chat(client, "the judge ruled", stream=True).status_code == 200
    assert recorder.by_labels("quorum_requests") == {
        (("expert", "mathematician"), ("model", "auto"), ("skill", "math"), ("status", "ok")): 1,
        (("expert", "jurist"), ("model", "auto"), ("skill", "law"), ("status", "ok")): 1,
    }
    assert recorder.count("quorum_time_to_first_token_seconds", expert="jurist") == 1
    assert (
        recorder.count("quorum_request_latency_seconds", expert="mathematician", status="ok") == 1
    )


def test_routing_latency_has_classify_recruit_and_total_in_seconds(client, recorder):
    chat(client)
    assert recorder.total("quorum_routing_latency_seconds", stage="classify") == pytest.approx(
        0.003
    )
    assert recorder.total("quorum_routing_latency_seconds", stage="recruit") == pytest.approx(
        0.0005
    )
    assert recorder.count("quorum_routing_latency_seconds", stage="total") == 1
    assert recorder.total("quorum_routing_confidence", model="auto") == pytest.approx(0.4)


def test_tokens_and_cost_per_expert_use_the_registry_prices(client, recorder):
    chat(client)
    chat(client)
    tokens = recorder.by_labels("quorum_tokens")
    assert tokens[(("direction", "input"), ("expert", "mathematician"))] == 2 * PROMPT_TOKENS
    assert tokens[(("direction", "output"), ("expert", "mathematician"))] == 2 * 3
    # 2 requests × (11 prompt tokens × 2.0 + 3 generated × 8.0) per 1M tokens
    expected = 2 * (PROMPT_TOKENS * 2.0 + 3 * 8.0) / 1e6
    assert recorder.total("quorum_cost", expert="mathematician") == pytest.approx(expected)


def test_a_named_expert_has_no_skill_and_an_expert_failure_is_an_error(client, recorder):
    assert chat(client, model="flaky").status_code == 502
    assert recorder.by_labels("quorum_requests") == {
        (("expert", "flaky"), ("model", "flaky"), ("skill", "none"), ("status", "expert_failed")): 1
    }
    assert recorder.total("quorum_errors", type="expert_failed", expert="flaky") == 1
    assert recorder.total("quorum_tokens", expert="flaky", direction="input") == PROMPT_TOKENS


def test_a_rejected_request_counts_its_error_code(client, recorder):
    assert chat(client, model="nope").status_code == 404
    assert client.post("/v1/chat/completions", content=b"{not json").status_code == 400
    assert recorder.total("quorum_requests", status="model_not_found", expert="none") == 1
    assert recorder.total("quorum_errors", type="model_not_found", expert="none") == 1
    assert recorder.count("quorum_errors") == 2


def test_inflight_goes_up_while_answering_and_back_to_zero(client, recorder):
    chat(client)
    values = [v for v, t in recorder.metrics["quorum_expert_inflight"].calls]
    assert values == [1, 0]


def test_inflight_is_released_from_the_routed_expert_when_another_one_answered(recorder):
    observer = RayMetricsObserver(REGISTRY, QuorumMetrics(recorder))
    decision = RoutingDecision("auto", ["mathematician", "jurist"], [], None, None)
    observer.routed("r1", decision, 0.01)
    observer.finished("r1", "jurist", "ok", None, 1.0)  # a fallback answered
    assert recorder.last("quorum_expert_inflight", expert="mathematician") == 0
    assert recorder.count("quorum_expert_inflight", expert="jurist") == 0
    observer.finished("unknown", "jurist", "ok", None, 1.0)  # never routed: nothing to release
    assert recorder.count("quorum_expert_inflight", expert="jurist") == 0


def test_labels_never_carry_request_ids_or_prompt_text(client, recorder):
    chat(client, "my secret prompt about x")
    for metric in recorder.metrics.values():
        for _, tags in metric.calls:
            for value in tags.values():
                assert not value.startswith("chatcmpl-") and "secret" not in value


def test_a_failing_metrics_backend_does_not_fail_requests(recorder):
    def broken(spec):
        class Broken:
            def inc(self, *a, **k):
                raise RuntimeError("metrics agent down")

            observe = set = inc

        return Broken()

    client = make_client(RayMetricsObserver(REGISTRY, QuorumMetrics(broken)))
    assert chat(client).status_code == 200
    assert chat(client, stream=True).status_code == 200


def test_fan_out_calls_every_observer_even_after_one_fails():
    class Exploding(Observer):
        def routed(self, *a):
            raise RuntimeError("boom")

    recording = RecordingObserver()
    client = make_client(FanOutObserver([Exploding(), recording]))
    assert chat(client).status_code == 200
    assert [e[0] for e in recording.events] == ["routed", "first_token", "finished"]


def test_scheduler_api_records_queue_batches_swaps_aggregation_fallbacks(recorder, monkeypatch):
    monkeypatch.setattr(metrics_module, "_default", QuorumMetrics(recorder))
    metrics_module.set_queue_depth("jurist", 3)
    metrics_module.set_queue_depth("jurist", 1)
    metrics_module.record_queue_wait("jurist", 0.25)
    metrics_module.record_batch("jurist", 8)
    metrics_module.record_swap("jurist", 4.5)
    metrics_module.record_aggregation("vote")
    metrics_module.record_fallback("flaky", "jurist", "expert_failed")
    assert recorder.last("quorum_expert_queue_depth", expert="jurist") == 1
    assert recorder.total("quorum_expert_queue_wait_seconds", expert="jurist") == 0.25
    assert recorder.total("quorum_expert_batch_size", expert="jurist") == 8
    assert recorder.total("quorum_expert_swaps", expert="jurist") == 1
    assert recorder.total("quorum_expert_swap_seconds", expert="jurist") == 4.5
    assert recorder.total("quorum_aggregations", mode="vote") == 1
    assert recorder.total(
        "quorum_fallbacks", from_expert="flaky", to_expert="jurist", reason="expert_failed"
    ) == 1  # fmt: skip


def test_exported_names_follow_rays_prometheus_naming():
    by_name = {s.name: s for s in METRICS}
    assert exported_names(by_name["quorum_requests"]) == {"ray_quorum_requests_total"}
    assert exported_names(by_name["quorum_expert_inflight"]) == {"ray_quorum_expert_inflight"}
    assert exported_names(by_name["quorum_expert_batch_size"]) == {
        "ray_quorum_expert_batch_size_bucket", "ray_quorum_expert_batch_size_sum",
        "ray_quorum_expert_batch_size_count",
    }  # fmt: skip


def test_metric_names_are_unique_and_labels_bounded():
    names = [s.name for s in METRICS]
    for spec in METRICS:  # Ray refuses to register a metric whose description is not ASCII
        assert spec.description.isascii() and spec.name.isascii(), spec.name
    assert len(names) == len(set(names))
    unbounded = {"request_id", "id", "prompt", "text", "user", "api_key"}
    for spec in METRICS:
        assert not unbounded & set(spec.tags), spec.name
        if spec.kind == "histogram":
            assert list(spec.boundaries) == sorted(spec.boundaries) and spec.boundaries[0] > 0


def test_two_servers_starting_together_do_not_both_take_the_metrics_port():
    import socket

    from serving.cli import _reserve_metrics_port

    first = _reserve_metrics_port(0)
    port = first.getsockname()[1]
    second = _reserve_metrics_port(port)  # another `quorum serve` starting at the same moment
    assert second.getsockname()[1] != port
    agent = socket.socket()  # Ray's metrics agent binds with SO_REUSEADDR, then listens
    agent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    agent.bind(("", port))
    agent.listen()
    for s in (first, second, agent):
        s.close()
