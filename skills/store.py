"""Shared state: expert profiles (versioned), live statistics, caches.

`StateStore` is the interface; `InMemoryStateStore` serves a single process (the embedded
default, unit tests). A Redis implementation arrives with skill profiling and is used whenever
Redis is configured. Values are JSON; statistics are named counters grouped under a key.
"""

from __future__ import annotations

import json
import threading
import time
from abc import ABC, abstractmethod
from typing import Any

PROFILE_KEY = "quorum:profile:current"


class StateStore(ABC):
    """Small key-value interface that both an in-process dict and Redis can implement."""

    @abstractmethod
    def get_json(self, key: str) -> Any | None:
        """The JSON value stored at `key`, or None if there is none."""

    @abstractmethod
    def put_json(self, key: str, value: Any, ttl_s: float | None = None) -> None:
        """Store `value` at `key`; with `ttl_s`, it expires that many seconds later."""

    @abstractmethod
    def incr(self, key: str, field: str, amount: float = 1.0) -> float:
        """Add `amount` to counter `field` of `key`; return the new value."""

    @abstractmethod
    def counters(self, key: str) -> dict[str, float]: ...

    # Profiles are the one structured value every component reads; keep their key in one place.
    def current_profile(self) -> dict | None:
        return self.get_json(PROFILE_KEY)

    def publish_profile(self, profile: dict) -> None:
        self.put_json(PROFILE_KEY, profile)


class InMemoryStateStore(StateStore):
    """Thread-safe, process-local. Values are stored serialised so callers never share objects."""

    def __init__(self, clock=time.monotonic) -> None:
        self._values: dict[str, str] = {}
        self._expires: dict[str, float] = {}  # key -> clock() deadline, for values with a TTL
        self._counters: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()
        self._clock = clock
        self._puts = 0

    def get_json(self, key: str) -> Any | None:
        with self._lock:
            if key in self._expires and self._expires[key] <= self._clock():
                self._values.pop(key, None)
                self._expires.pop(key, None)
            raw = self._values.get(key)
        return None if raw is None else json.loads(raw)

    def put_json(self, key: str, value: Any, ttl_s: float | None = None) -> None:
        raw = json.dumps(value)
        with self._lock:
            self._values[key] = raw
            if ttl_s is None:
                self._expires.pop(key, None)
            else:
                self._expires[key] = self._clock() + ttl_s
            self._puts += 1
            if self._puts % 1024 == 0:  # drop expired values nobody read again
                now = self._clock()
                for k in [k for k, t in self._expires.items() if t <= now]:
                    self._values.pop(k, None)
                    self._expires.pop(k, None)

    def incr(self, key: str, field: str, amount: float = 1.0) -> float:
        with self._lock:
            group = self._counters.setdefault(key, {})
            group[field] = group.get(field, 0.0) + amount
            return group[field]

    def counters(self, key: str) -> dict[str, float]:
        with self._lock:
            return dict(self._counters.get(key, {}))
