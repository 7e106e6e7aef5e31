"""A `StateStore` that keeps serving when its shared backend (Redis) goes away, and loses nothing.

`ResilientStateStore(primary)` wraps the Redis store with an in-process mirror:

- Every write goes to the mirror first, then to Redis (write-through). While Redis is down the
  write is kept in an ordered journal instead; nothing fails.
- Reads go to Redis while it answers (and refresh the mirror); while it is down they are served
  from the mirror, so routers keep the last profile they saw.
- Reconnection is tried at most every `retry_interval_s`, on the next call (no thread). When Redis
  answers again the journal is replayed in order, and anything Redis lost (a restart without
  persistence comes back empty) is written back from the mirror: values, profiles and counters
  this process has seen. Keys are never deleted through `StateStore`, so a key the mirror has and
  Redis lacks was lost, not removed.

Counters are additive: while down, increments are journaled as amounts and replayed as
`HINCRBYFLOAT`, so increments made by other processes in the meantime are kept as well. A counter
group Redis lost entirely is restored from the mirror's last known totals.

Methods only the primary has (`profile_versions`, `profile`, `url`, ...) are passed through.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from skills.redis_store import StateStoreUnavailableError
from skills.store import PROFILE_KEY, InMemoryStateStore, StateStore

__all__ = ["ResilientStateStore"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], float]


class ResilientStateStore(StateStore):
    """`primary` (Redis) with an in-process mirror and a replay journal; see the module doc."""

    def __init__(
        self,
        primary: StateStore,
        *,
        retry_interval_s: float = 1.0,
        clock: Clock = time.monotonic,
        unavailable: tuple[type[BaseException], ...] = (StateStoreUnavailableError, OSError),
    ) -> None:
        self.primary = primary
        self.mirror = InMemoryStateStore()
        self.retry_interval_s = retry_interval_s
        self.clock = clock
        self._unavailable = unavailable
        self._lock = threading.RLock()
        self._down_since: float | None = None
        self._last_try = float("-inf")
        self._journal: list[tuple[str, tuple]] = []  # ("put", (key, value)) | ("incr", (k, f, n))
        self._values: set[str] = set()  # keys the mirror holds a value for
        self._counters: set[str] = set()  # counter groups the mirror knows
        self.outages = 0
        self.replayed = 0

    # -- health -----------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """Whether Redis answered the last time it was asked."""
        return self._down_since is None

    def _mark_down(self, exc: BaseException) -> None:
        if self._down_since is None:
            self._down_since = self.clock()
            self.outages += 1
            log.warning("state store unreachable (%s); serving from process memory and "
                        "journaling writes until it returns", type(exc).__name__)  # fmt: skip
        self._last_try = self.clock()

    def _ready(self) -> bool:
        """True when Redis may be used now: it is up, or it came back and was resynchronised."""
        if self._down_since is None:
            return True
        if self.clock() - self._last_try < self.retry_interval_s:
            return False
        self._last_try = self.clock()
        try:
            self._resync()
        except self._unavailable:
            return False
        log.info("state store reachable again after %.1fs; replayed %d journaled write(s)",
                 self.clock() - self._down_since, self.replayed)  # fmt: skip
        self._down_since = None
        return True

    def _resync(self) -> None:
        """Restore what Redis lost from the mirror, then replay the rest of the journal."""
        self.restore()
        while self._journal:
            op, args = self._journal[0]
            if op == "put":
                self.primary.put_json(*args)
            else:
                self.primary.incr(*args)
            self._journal.pop(0)  # only once applied: a failure mid-way resumes here
            self.replayed += 1

    def restore(self) -> int:
        """Write back every value and counter group the mirror has and Redis lacks; the count.

        The mirror's copy already includes the journaled writes to those keys, so their journal
        entries are dropped (replaying an increment on top of a restored total would count it
        twice)."""
        restored = 0
        for key in sorted(self._values):
            if self.primary.get_json(key) is None:
                self.primary.put_json(key, self.mirror.get_json(key))
                self._journal = [e for e in self._journal if not (e[0] == "put" and e[1][0] == key)]
                restored += 1
        for key in sorted(self._counters):
            if not self.primary.counters(key):
                for name, value in self.mirror.counters(key).items():
                    self.primary.incr(key, name, value)
                self._journal = [e for e in self._journal if not (e[0] == "incr" and e[1][0] == key)]
                restored += 1
        if restored:
            log.warning("state store had lost %d key(s); restored them from process memory",
                        restored)  # fmt: skip
        return restored

    def _try(self, fn: Callable[[], T]) -> tuple[bool, T | None]:
        if not self._ready():
            return False, None
        try:
            return True, fn()
        except self._unavailable as exc:
            self._mark_down(exc)
            return False, None

    # -- StateStore -------------------------------------------------------------------------

    def get_json(self, key: str) -> Any | None:
        with self._lock:
            ok, value = self._try(lambda: self.primary.get_json(key))
            if not ok:
                return self.mirror.get_json(key)
            if value is None and key in self._values:
                # Redis lost it (restart without persistence): serve and put back the mirror's.
                value = self.mirror.get_json(key)
                self._try(lambda: self.primary.put_json(key, value))
                return value
            if value is not None:
                self.mirror.put_json(key, value)
                self._values.add(key)
            return value

    def put_json(self, key: str, value: Any, ttl_s: float | None = None) -> None:
        """Values with a TTL are mirrored until they expire, but not restored to a Redis that
        lost them (they are short-lived by definition)."""
        with self._lock:
            self.mirror.put_json(key, value, ttl_s)
            if ttl_s is None:
                self._values.add(key)
            ok, _ = self._try(lambda: self.primary.put_json(key, value, ttl_s))
            if not ok:
                self._journal.append(("put", (key, value, ttl_s)))

    def incr(self, key: str, field: str, amount: float = 1.0) -> float:
        with self._lock:
            self._counters.add(key)
            ok, value = self._try(lambda: self.primary.incr(key, field, amount))
            local = self.mirror.incr(key, field, amount)
            if not ok:
                self._journal.append(("incr", (key, field, amount)))
                return local
            # Keep the mirror at Redis's total (other processes count too).
            self.mirror.incr(key, field, float(value) - local)
            return float(value)

    def counters(self, key: str) -> dict[str, float]:
        with self._lock:
            ok, value = self._try(lambda: self.primary.counters(key))
            if not ok:
                return self.mirror.counters(key)
            if not value and key in self._counters:
                return self.mirror.counters(key)  # lost by Redis; restored on resync
            if value:
                self._counters.add(key)
                local = self.mirror.counters(key)
                for name, total in value.items():
                    self.mirror.incr(key, name, total - local.get(name, 0.0))
            return dict(value or {})

    def current_profile(self) -> dict | None:
        with self._lock:
            ok, value = self._try(self.primary.current_profile)
            if not ok:
                return self.mirror.get_json(PROFILE_KEY)
            if value is None and PROFILE_KEY in self._values:
                value = self.mirror.get_json(PROFILE_KEY)
                self._try(lambda: self.primary.publish_profile(value))
                return value
            if value is not None:
                self.mirror.put_json(PROFILE_KEY, value)
                self._values.add(PROFILE_KEY)
            return value

    def publish_profile(self, profile: dict) -> None:
        self.put_json(PROFILE_KEY, profile)  # the Redis store routes PROFILE_KEY to publish

    def pending(self) -> int:
        """Writes waiting for Redis to come back."""
        with self._lock:
            return len(self._journal)

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes this class lacks: the primary's extras (url, history...).
        if name == "primary":
            raise AttributeError(name)
        return getattr(self.primary, name)
