"""What the pipeline reports as it runs: one `Observer` with no-op defaults.

`Pipeline` calls these hooks at each step; implementations turn them into metrics (Ray's
metrics API → dashboard and Prometheus), audit records or test assertions. Hooks must be cheap
and must not raise: they run on the request path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from experts.errors import QuorumError
from experts.stream import Delta
from router import RoutingDecision

log = logging.getLogger(__name__)


class Observer:
    """Base observer: every hook does nothing."""

    def routed(self, request_id: str, decision: RoutingDecision, route_s: float) -> None:
        """The router decided (classification + recruitment took `route_s`, seen from the ingress)."""

    def first_token(self, request_id: str, expert: str, ttft_s: float) -> None:
        """The expert produced its first delta `ttft_s` after the request arrived."""

    def finished(
        self, request_id: str, expert: str, status: str, last: Delta | None, latency_s: float
    ) -> None:
        """The answer ended: `status` is "ok" or the error code; `last` carries token counts."""

    def rejected(self, error: QuorumError) -> None:
        """A request failed before any expert was asked (bad input, unknown model, limits)."""


class RecordingObserver(Observer):
    """Keeps every event in a list; for tests and debugging."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def routed(self, request_id, decision, route_s):
        self.events.append(("routed", request_id, decision.experts))

    def first_token(self, request_id, expert, ttft_s):
        self.events.append(("first_token", request_id, expert))

    def finished(self, request_id, expert, status, last, latency_s):
        self.events.append(("finished", request_id, expert, status))

    def rejected(self, error):
        self.events.append(("rejected", error.code or error.type))


class FanOutObserver(Observer):
    """Calls several observers in turn (metrics, audit, ...); one failing does not stop the rest."""

    def __init__(self, observers: Iterable[Observer]) -> None:
        self.observers = list(observers)

    def _each(self, hook: str, *args: Any) -> None:
        for observer in self.observers:
            try:
                getattr(observer, hook)(*args)
            except Exception:
                log.exception("observer %s.%s failed", type(observer).__name__, hook)

    def routed(self, request_id, decision, route_s):
        self._each("routed", request_id, decision, route_s)

    def first_token(self, request_id, expert, ttft_s):
        self._each("first_token", request_id, expert, ttft_s)

    def finished(self, request_id, expert, status, last, latency_s):
        self._each("finished", request_id, expert, status, last, latency_s)

    def rejected(self, error):
        self._each("rejected", error)
