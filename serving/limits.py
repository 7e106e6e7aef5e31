"""Usage counters behind access control (serving/auth.py): fixed-window request counts and daily
token totals per API key name, in process or in Redis (shared by every ingress replica; keys
`quorum:ratelimit:<key name>:<minute>` and `quorum:tokens:<key name>:<day>`, both expiring).
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["InMemoryLimiter", "RedisLimiter", "UsageLimiter"]


class UsageLimiter(ABC):
    """Fixed-window request counters and daily token totals per key name."""

    @abstractmethod
    def hit(self, key: str, window: int, ttl_s: int) -> int:
        """Count one request of `key` in `window`; return the count so far in that window."""

    @abstractmethod
    def add_tokens(self, key: str, day: str, tokens: int) -> int:
        """Add `tokens` to `key`'s total for `day`; return the new total."""

    @abstractmethod
    def tokens(self, key: str, day: str) -> int:
        """`key`'s total for `day`."""


class InMemoryLimiter(UsageLimiter):
    """Process-local counters (one ingress replica, or Redis unreachable)."""

    def __init__(self) -> None:
        self._hits: dict[tuple[str, int], int] = {}
        self._tokens: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def hit(self, key: str, window: int, ttl_s: int) -> int:
        with self._lock:
            if len(self._hits) > 10_000:  # drop old windows
                self._hits = {k: v for k, v in self._hits.items() if k[1] >= window - 1}
            count = self._hits.get((key, window), 0) + 1
            self._hits[(key, window)] = count
            return count

    def add_tokens(self, key: str, day: str, tokens: int) -> int:
        with self._lock:
            total = self._tokens.get((key, day), 0) + tokens
            self._tokens[(key, day)] = total
            return total

    def tokens(self, key: str, day: str) -> int:
        with self._lock:
            return self._tokens.get((key, day), 0)


class RedisLimiter(UsageLimiter):
    """Counters in Redis, shared by all ingress replicas; in process while Redis is away."""

    def __init__(self, client: Any, *, fallback: UsageLimiter | None = None) -> None:
        self._client = client
        self._fallback = fallback or InMemoryLimiter()
        self._down = False

    @classmethod
    def from_url(cls, url: str, timeout_s: float = 0.5) -> RedisLimiter:
        import redis

        return cls(redis.Redis.from_url(url, socket_timeout=timeout_s,
                                        socket_connect_timeout=timeout_s, decode_responses=True))  # fmt: skip

    def _redis(self, fn: Callable[[], int], local: Callable[[], int]) -> int:
        import redis

        try:
            value = fn()
        except redis.RedisError as exc:
            if not self._down:
                log.warning("rate limits: Redis unreachable (%s); counting in process until it "
                            "returns", type(exc).__name__)  # fmt: skip
            self._down = True
            return local()
        if self._down:
            log.info("rate limits: Redis is back; counting there again")
            self._down = False
        return value

    def hit(self, key: str, window: int, ttl_s: int) -> int:
        name = f"quorum:ratelimit:{key}:{window}"

        def remote() -> int:
            pipe = self._client.pipeline(transaction=True)
            pipe.incr(name)
            pipe.expire(name, ttl_s)
            return int(pipe.execute()[0])

        return self._redis(remote, lambda: self._fallback.hit(key, window, ttl_s))

    def add_tokens(self, key: str, day: str, tokens: int) -> int:
        name = f"quorum:tokens:{key}:{day}"

        def remote() -> int:
            pipe = self._client.pipeline(transaction=True)
            pipe.incrby(name, tokens)
            pipe.expire(name, 2 * 86400)
            return int(pipe.execute()[0])

        return self._redis(remote, lambda: self._fallback.add_tokens(key, day, tokens))

    def tokens(self, key: str, day: str) -> int:
        name = f"quorum:tokens:{key}:{day}"
        return self._redis(
            lambda: int(self._client.get(name) or 0), lambda: self._fallback.tokens(key, day)
        )


# -- the check --------------------------------------------------------------------------------
