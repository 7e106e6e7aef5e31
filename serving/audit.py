"""Routing audit: what the router decided for each request and how it ended, readable by request id.

One record per finished request (written when the answer ends, so it carries the outcome):

    {"request_id": "chatcmpl-…", "time": 1732412345.2, "model": "auto",
     "skills": [{"skill": "math", "probability": 0.91}, …], "confidence": 0.62,
     "experts": ["smollm2-135m"], "scores": [{"expert", "quality", "relative_cost", "utility"}, …],
     "cost_weight": 0.1, "competence_source": "registry",
     "latency_ms": {"classify": 4.1, "recruit": 0.2, "route": 6.3, "first_token": 210.0,
                    "total": 900.5},
     "outcome": {"status": "ok", "expert": "smollm2-135m", "prompt_tokens": 31,
                 "completion_tokens": 24, "cost": 7.4e-06}}

No prompt or answer text, no keys: skills, experts, scores, timings and token counts only.

Where records live (`AuditLog`):
- `MemoryAuditLog`: a ring buffer in the process (the last `capacity` records). Each ingress
  replica has its own, so with more than one replica use Redis.
- `RedisAuditLog`: a capped Redis stream (`XADD quorum:audit MAXLEN ~ N`) shared by every replica,
  plus a small key per request id (`quorum:audit:id:<id>` → stream entry id, expiring after
  `index_ttl_s`) so a record is found without scanning. Writes go through a background thread
  with a bounded queue: the request path never waits for Redis, and a Redis outage drops audit
  records (counted in `dropped`, logged) instead of failing requests.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import Any

from experts.engine import Delta
from experts.errors import QuorumError
from experts.registry import Registry
from router import RoutingDecision
from serving.metrics import expert_cost
from serving.observe import Observer

__all__ = [
    "AuditLog",
    "AuditObserver",
    "AuditRecordNotFoundError",
    "MemoryAuditLog",
    "RedisAuditLog",
    "make_audit_log",
]

log = logging.getLogger(__name__)

STREAM_KEY = "quorum:audit"
INDEX_PREFIX = "quorum:audit:id:"


class AuditRecordNotFoundError(QuorumError):
    """No routing record for this request id (unknown, not finished yet, or aged out)."""

    status = 404
    type = "invalid_request_error"
    code = "routing_record_not_found"


class AuditLog(ABC):
    """Where routing records go. `append` must be cheap and must not raise (request path)."""

    @abstractmethod
    def append(self, record: dict) -> None:
        """Keep `record` (it has a `request_id`)."""

    @abstractmethod
    def get(self, request_id: str) -> dict | None:
        """The record of `request_id`, or None when there is none (never kept or aged out)."""

    def describe(self) -> str:
        """Where records are kept and for how long; goes into "not found" messages."""
        return type(self).__name__


class MemoryAuditLog(AuditLog):
    """The last `capacity` records of this process."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._records: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()

    def append(self, record: dict) -> None:
        raw = json.loads(json.dumps(record))  # a private copy: callers may reuse their dicts
        with self._lock:
            self._records[record["request_id"]] = raw
            self._records.move_to_end(record["request_id"])
            while len(self._records) > self.capacity:
                self._records.popitem(last=False)

    def get(self, request_id: str) -> dict | None:
        with self._lock:
            record = self._records.get(request_id)
        return None if record is None else json.loads(json.dumps(record))

    def recent(self, n: int = 100) -> list[dict]:
        """The last `n` records, newest first."""
        with self._lock:
            return [dict(r) for r in list(reversed(self._records.values()))[:n]]

    def describe(self) -> str:
        return f"in process (this ingress replica), the last {self.capacity} requests"


class RedisAuditLog(AuditLog):
    """A capped Redis stream shared by every replica. Build with `from_url`; tests may pass a
    client (`decode_responses=True`)."""

    def __init__(
        self,
        client: Any,
        *,
        url: str = "redis://?",
        maxlen: int = 100_000,
        index_ttl_s: int = 7 * 24 * 3600,
        queue_size: int = 10_000,
    ) -> None:
        from skills.redis_store import redact_url

        self._client = client
        self.url = redact_url(url)
        self.maxlen = maxlen
        self.index_ttl_s = index_ttl_s
        self.dropped = 0
        self._queue: queue.Queue[dict] = queue.Queue(maxsize=queue_size)
        self._writer: threading.Thread | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 2.0, **kwargs: Any) -> RedisAuditLog:
        import redis

        client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, decode_responses=True
        )
        return cls(client, url=url, **kwargs)

    def describe(self) -> str:
        return (
            f"Redis stream {STREAM_KEY} at {self.url}, about the last {self.maxlen} requests, "
            f"findable by id for {self.index_ttl_s} s"
        )

    def append(self, record: dict) -> None:
        with self._lock:
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(
                    target=self._drain, name="quorum-audit-writer", daemon=True
                )
                self._writer.start()
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.warning("audit: queue full, %d records dropped so far", self.dropped)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued record was written (or dropped); True if that happened."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def _drain(self) -> None:
        while True:
            record = self._queue.get()
            try:
                self.write(record)
            except Exception as exc:  # Redis down: drop this record, keep serving
                self.dropped += 1
                log.warning("audit: could not write to %s (%s); %d records dropped so far",
                            self.url, type(exc).__name__, self.dropped)  # fmt: skip
            finally:
                self._queue.task_done()

    def write(self, record: dict) -> str:
        """Append `record` now (blocking); returns its stream entry id."""
        entry_id = self._client.xadd(
            STREAM_KEY,
            {"request_id": record["request_id"], "record": json.dumps(record)},
            maxlen=self.maxlen,
            approximate=True,
        )
        self._client.set(INDEX_PREFIX + record["request_id"], entry_id, ex=self.index_ttl_s)
        return entry_id

    def get(self, request_id: str) -> dict | None:
        import redis

        from skills.redis_store import StateStoreUnavailableError

        try:
            entry_id = self._client.get(INDEX_PREFIX + request_id)
            if entry_id is None:
                return None
            entries = self._client.xrange(STREAM_KEY, min=entry_id, max=entry_id)
        except redis.RedisError as exc:
            raise StateStoreUnavailableError(
                f"Redis at {self.url} failed to read the routing audit: {type(exc).__name__}: {exc}"
            ) from None
        if not entries:  # trimmed from the stream by MAXLEN
            return None
        return json.loads(entries[0][1]["record"])


def make_audit_log(redis_url: str | None = None) -> AuditLog:
    """Redis when configured (`--redis-url` / `QUORUM_REDIS_URL`), else in process."""
    import os

    url = redis_url or os.environ.get("QUORUM_REDIS_URL")
    return RedisAuditLog.from_url(url) if url else MemoryAuditLog()


class AuditObserver(Observer):
    """Builds one record per request from the pipeline's hooks and appends it to `audit_log`."""

    def __init__(self, audit_log: AuditLog, registry: Registry, max_pending: int = 10_000) -> None:
        self.log = audit_log
        self.registry = registry
        self.max_pending = max_pending
        self._pending: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()

    def routed(self, request_id: str, decision: RoutingDecision, route_s: float) -> None:
        recruitment = decision.recruitment or {}
        record = {
            "request_id": request_id,
            "time": round(time.time(), 3),
            "model": decision.model,
            "skills": decision.skills,
            "confidence": decision.confidence,
            "experts": decision.experts,
            "scores": recruitment.get("scores", []),
            "cost_weight": recruitment.get("cost_weight"),
            "competence_source": recruitment.get("competence_source"),
            "latency_ms": {**decision.latency_ms, "route": round(route_s * 1000, 3)},
            "outcome": None,
        }
        with self._lock:
            self._pending[request_id] = record
            while len(self._pending) > self.max_pending:
                self._pending.popitem(last=False)

    def first_token(self, request_id: str, expert: str, ttft_s: float) -> None:
        with self._lock:
            record = self._pending.get(request_id)
            if record is not None:
                record["latency_ms"]["first_token"] = round(ttft_s * 1000, 3)

    def finished(
        self, request_id: str, expert: str, status: str, last: Delta | None, latency_s: float
    ) -> None:
        with self._lock:
            record = self._pending.pop(request_id, None)
        if record is None:
            return
        prompt = last.prompt_tokens if last else 0
        completion = last.completion_tokens if last else 0
        record["latency_ms"]["total"] = round(latency_s * 1000, 3)
        record["outcome"] = {"status": status, "expert": expert, "prompt_tokens": prompt,
                             "completion_tokens": completion,
                             "cost": expert_cost(self.registry, expert, prompt, completion)}  # fmt: skip
        try:
            self.log.append(record)
        except Exception:
            log.exception("audit: append failed")
