"""Quorum's metrics, through Ray's metrics API (`ray.util.metrics`).

Ray exports them on every node's Prometheus endpoint (`ray start --metrics-export-port`, or
`quorum serve --metrics-port`) and shows them in the Ray dashboard's Metrics view. On that endpoint
a name gets the `ray_` prefix, counters also get `_total` and histograms `_bucket`/`_sum`/`_count`
(`exported_names`); dashboards and alerts must use those names. Ray 2.60 reports a histogram's
`_sum` from bucket midpoints (an observation of 0.5 in the bucket 0.1..1 adds 0.55), so take
quantiles from `_bucket` and exact totals from counters (tokens, cost), not means from `_sum`.

Two ways in:

- `RayMetricsObserver`, the `serving.observe.Observer` the ingress hands to the `Pipeline`:
  requests, routing latency, end-to-end latency, time to first token, tokens, cost, errors and
  requests in flight per expert.
- For the scheduler and the aggregator, one call per event, on the process's `QuorumMetrics`
  (`default_metrics()`, created on first use) or on one passed in:

      from serving import metrics
      metrics.set_queue_depth("smollm2-135m", 3)       # requests waiting for this expert now
      metrics.record_queue_wait("smollm2-135m", 0.12)  # seconds one request waited
      metrics.record_batch("smollm2-135m", 8)          # requests sent to the engine together
      metrics.record_swap("gemma3-270m", 4.2)          # engine woken/loaded; seconds it took
      metrics.record_aggregation("vote")               # answers combined with this mode
      metrics.record_fallback("gemma3-270m", "smollm2-135m", "timeout")

Labels stay bounded: `model` is a registry name, `skill` the top-1 skill of the taxonomy ("none"
when the client named an expert), `expert` a registry name, `status` "ok" / "cancelled" / an error
code. No request ids, prompt text or keys ever go into a label.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from experts.errors import QuorumError
from experts.registry import Registry
from experts.stream import Delta
from router import RoutingDecision
from serving.observe import Observer

__all__ = [
    "METRICS",
    "MetricSpec",
    "QuorumMetrics",
    "RayMetricsObserver",
    "default_metrics",
    "expert_cost",
    "exported_names",
    "record_aggregation",
    "record_batch",
    "record_fallback",
    "record_queue_wait",
    "record_swap",
    "set_queue_depth",
]

log = logging.getLogger(__name__)

NONE = "none"  # label value when there is nothing to name (no skill, no expert yet)

_SECONDS_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_SECONDS_SLOW = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_UNIT = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass(frozen=True)
class MetricSpec:
    """One metric as Ray sees it. `fed_by` says which stage records it."""

    name: str
    kind: Literal["counter", "histogram", "gauge"]
    description: str
    tags: tuple[str, ...]
    boundaries: tuple[float, ...] = ()
    fed_by: Literal["ingress", "scheduler"] = "ingress"


# fmt: off
METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("quorum_requests", "counter", "Chat requests that ended, by virtual model asked "
               "for, top-1 skill, expert that answered and status (ok, cancelled or error code).",
               ("model", "skill", "expert", "status")),
    MetricSpec("quorum_routing_latency_seconds", "histogram", "Routing time by stage: classify "
               "(skill classifier), recruit (expert choice), total (as seen by the ingress).",
               ("stage",), _SECONDS_FAST),
    MetricSpec("quorum_routing_confidence", "histogram",
               "Classifier confidence (1 - normalised entropy) of routed requests.",
               ("model",), _UNIT),
    MetricSpec("quorum_request_latency_seconds", "histogram",
               "End-to-end latency from arrival to the last token, by expert and status.",
               ("expert", "status"), _SECONDS_SLOW),
    MetricSpec("quorum_time_to_first_token_seconds", "histogram",
               "From arrival (routing included) to the expert's first token.",
               ("expert",), _SECONDS_SLOW),
    MetricSpec("quorum_tokens", "counter", "Tokens by expert and direction (input = prompt, "
               "output = generated).", ("expert", "direction")),
    MetricSpec("quorum_cost", "counter", "Cost by expert: tokens x the registry's price per 1M "
               "tokens (cost.input_per_1m / cost.output_per_1m), in the registry's currency.",
               ("expert",)),
    MetricSpec("quorum_errors", "counter", "Errors by type (error code) and expert ('none' when "
               "the request failed before an expert was asked).", ("type", "expert")),
    MetricSpec("quorum_expert_inflight", "gauge",
               "Requests an expert is answering now, as seen by this ingress replica.",
               ("expert",)),
    MetricSpec("quorum_fallbacks", "counter", "Requests moved from one expert to another, and why.",
               ("from_expert", "to_expert", "reason"), fed_by="scheduler"),
    MetricSpec("quorum_expert_queue_depth", "gauge", "Requests waiting in an expert's queue.",
               ("expert",), fed_by="scheduler"),
    MetricSpec("quorum_expert_queue_wait_seconds", "histogram",
               "Time a request waited in an expert's queue before its batch started.",
               ("expert",), _SECONDS_SLOW, fed_by="scheduler"),
    MetricSpec("quorum_expert_batch_size", "histogram",
               "Requests sent to an expert's engine together.",
               ("expert",), _BATCH, fed_by="scheduler"),
    MetricSpec("quorum_expert_swaps", "counter", "Times an expert's engine was woken or loaded.",
               ("expert",), fed_by="scheduler"),
    MetricSpec("quorum_expert_swap_seconds", "histogram",
               "How long waking or loading an expert's engine took.",
               ("expert",), _SECONDS_SLOW, fed_by="scheduler"),
    MetricSpec("quorum_aggregations", "counter",
               "Multi-expert answers combined, by aggregation mode.",
               ("mode",), fed_by="scheduler"),
)
# fmt: on


def exported_names(spec: MetricSpec) -> set[str]:
    """The series names `spec` has on Ray's Prometheus endpoint."""
    base = f"ray_{spec.name}"
    if spec.kind == "counter":
        return {f"{base}_total"}
    if spec.kind == "histogram":
        return {f"{base}_bucket", f"{base}_sum", f"{base}_count"}
    return {base}


MetricBackend = Callable[[MetricSpec], Any]
"""Builds the object behind one spec; it has `inc`, `observe` or `set(value, tags=...)`."""


def ray_metric(spec: MetricSpec) -> Any:
    """The `ray.util.metrics` object for `spec` (the production backend)."""
    from ray.util import metrics as ray_metrics

    if spec.kind == "counter":
        return ray_metrics.Counter(spec.name, spec.description, tag_keys=spec.tags)
    if spec.kind == "histogram":
        return ray_metrics.Histogram(
            spec.name, spec.description, boundaries=list(spec.boundaries), tag_keys=spec.tags
        )
    return ray_metrics.Gauge(spec.name, spec.description, tag_keys=spec.tags)


class QuorumMetrics:
    """Every metric in `METRICS`, built by `backend`, with one method per thing worth recording."""

    def __init__(self, backend: MetricBackend = ray_metric) -> None:
        self._m = {spec.name: backend(spec) for spec in METRICS}

    def _inc(self, name: str, value: float, **tags: str) -> None:
        self._m[name].inc(value, tags=tags)

    def _observe(self, name: str, value: float, **tags: str) -> None:
        self._m[name].observe(value, tags=tags)

    def _set(self, name: str, value: float, **tags: str) -> None:
        self._m[name].set(value, tags=tags)

    # ingress (RayMetricsObserver)
    def request(self, model: str, skill: str, expert: str, status: str) -> None:
        self._inc("quorum_requests", 1, model=model, skill=skill, expert=expert, status=status)

    def routing_latency(self, stage: str, seconds: float) -> None:
        self._observe("quorum_routing_latency_seconds", max(seconds, 0.0), stage=stage)

    def routing_confidence(self, model: str, confidence: float) -> None:
        self._observe("quorum_routing_confidence", confidence, model=model)

    def request_latency(self, expert: str, status: str, seconds: float) -> None:
        self._observe("quorum_request_latency_seconds", seconds, expert=expert, status=status)

    def time_to_first_token(self, expert: str, seconds: float) -> None:
        self._observe("quorum_time_to_first_token_seconds", seconds, expert=expert)

    def tokens(self, expert: str, prompt: int, completion: int, cost: float) -> None:
        if prompt:
            self._inc("quorum_tokens", prompt, expert=expert, direction="input")
        if completion:
            self._inc("quorum_tokens", completion, expert=expert, direction="output")
        if cost:
            self._inc("quorum_cost", cost, expert=expert)

    def error(self, error_type: str, expert: str = NONE) -> None:
        self._inc("quorum_errors", 1, type=error_type, expert=expert)

    def inflight(self, expert: str, n: int) -> None:
        self._set("quorum_expert_inflight", n, expert=expert)

    # scheduler and aggregator (issue 4)
    def set_queue_depth(self, expert: str, n: int) -> None:
        """Requests waiting for `expert` now (a gauge: call it whenever the queue changes)."""
        self._set("quorum_expert_queue_depth", n, expert=expert)

    def record_queue_wait(self, expert: str, seconds: float) -> None:
        """One request waited `seconds` in `expert`'s queue before its batch started."""
        self._observe("quorum_expert_queue_wait_seconds", seconds, expert=expert)

    def record_batch(self, expert: str, size: int) -> None:
        """`size` requests went to `expert`'s engine together."""
        self._observe("quorum_expert_batch_size", size, expert=expert)

    def record_swap(self, expert: str, seconds: float) -> None:
        """`expert`'s engine was woken or loaded, taking `seconds`."""
        self._inc("quorum_expert_swaps", 1, expert=expert)
        self._observe("quorum_expert_swap_seconds", seconds, expert=expert)

    def record_aggregation(self, mode: str) -> None:
        """One multi-expert answer was combined with aggregation `mode`."""
        self._inc("quorum_aggregations", 1, mode=mode)

    def record_fallback(self, from_expert: str, to_expert: str, reason: str) -> None:
        """A request meant for `from_expert` went to `to_expert`; `reason` is a short fixed word
        (an error code such as "expert_timeout"), never free text."""
        self._inc(
            "quorum_fallbacks", 1, from_expert=from_expert, to_expert=to_expert, reason=reason
        )


_default: QuorumMetrics | None = None
_default_lock = threading.Lock()


def default_metrics() -> QuorumMetrics:
    """This process's `QuorumMetrics` on Ray's metrics API, built on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = QuorumMetrics()
        return _default


def set_queue_depth(expert: str, n: int) -> None:
    default_metrics().set_queue_depth(expert, n)


def record_queue_wait(expert: str, seconds: float) -> None:
    default_metrics().record_queue_wait(expert, seconds)


def record_batch(expert: str, size: int) -> None:
    default_metrics().record_batch(expert, size)


def record_swap(expert: str, seconds: float) -> None:
    default_metrics().record_swap(expert, seconds)


def record_aggregation(mode: str) -> None:
    default_metrics().record_aggregation(mode)


def record_fallback(from_expert: str, to_expert: str, reason: str) -> None:
    default_metrics().record_fallback(from_expert, to_expert, reason)


class _Pending:
    """Per-request context from `routed` until `finished`, bounded so a request whose end is never
    reported cannot grow it without limit (the oldest entry is dropped)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, key: str) -> Any | None:
        with self._lock:
            return self._items.get(key)

    def pop(self, key: str) -> Any | None:
        with self._lock:
            return self._items.pop(key, None)


def expert_cost(
    registry: Registry, expert: str, prompt_tokens: int, completion_tokens: int
) -> float:
    """What these tokens cost at the registry's prices per 1M tokens (0 for an unknown expert)."""
    try:
        price = registry.expert(expert).cost
    except KeyError:
        return 0.0
    return (prompt_tokens * price.input_per_1m + completion_tokens * price.output_per_1m) / 1e6


class RayMetricsObserver(Observer):
    """Turns the pipeline's hooks into `QuorumMetrics`. A hook never raises: a metrics failure is
    logged, the request goes on."""

    def __init__(
        self, registry: Registry, metrics: QuorumMetrics | None = None, max_pending: int = 10_000
    ) -> None:
        self.registry = registry
        self.metrics = metrics or default_metrics()
        self._pending = _Pending(max_pending)
        self._inflight: dict[str, int] = {}
        self._lock = threading.Lock()

    def _move_inflight(self, expert: str, step: int) -> None:
        with self._lock:
            n = max(self._inflight.get(expert, 0) + step, 0)
            self._inflight[expert] = n
        self.metrics.inflight(expert, n)

    def routed(self, request_id: str, decision: RoutingDecision, route_s: float) -> None:
        try:
            skill = decision.skills[0]["skill"] if decision.skills else NONE
            expert = decision.experts[0] if decision.experts else NONE
            # In flight is counted against the routed expert and released from that same expert,
            # even when a fallback or an aggregator ends up answering.
            self._pending.put(request_id, (decision.model, skill, expert))
            self.metrics.routing_latency("total", route_s)
            for stage in ("classify", "recruit"):
                if stage in decision.latency_ms:
                    self.metrics.routing_latency(stage, decision.latency_ms[stage] / 1000)
            if decision.confidence is not None:
                self.metrics.routing_confidence(decision.model, decision.confidence)
            self._move_inflight(expert, +1)
        except Exception:
            log.exception("metrics: routed hook failed")

    def first_token(self, request_id: str, expert: str, ttft_s: float) -> None:
        try:
            self.metrics.time_to_first_token(expert, ttft_s)
        except Exception:
            log.exception("metrics: first_token hook failed")

    def finished(
        self, request_id: str, expert: str, status: str, last: Delta | None, latency_s: float
    ) -> None:
        try:
            model, skill, routed_to = self._pending.pop(request_id) or (NONE, NONE, None)
            self.metrics.request(model, skill, expert, status)
            self.metrics.request_latency(expert, status, latency_s)
            if last is not None:
                prompt, completion = last.prompt_tokens, last.completion_tokens
                self.metrics.tokens(
                    expert,
                    prompt,
                    completion,
                    expert_cost(self.registry, expert, prompt, completion),
                )
            if status not in ("ok", "cancelled"):
                self.metrics.error(status, expert)
            if routed_to is not None:
                self._move_inflight(routed_to, -1)
        except Exception:
            log.exception("metrics: finished hook failed")

    def rejected(self, error: QuorumError) -> None:
        try:
            code = error.code or error.type
            self.metrics.request(NONE, NONE, NONE, code)
            self.metrics.error(code)
        except Exception:
            log.exception("metrics: rejected hook failed")
