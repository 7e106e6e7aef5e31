"""`StateStore` on Redis: what every replica and the profiling job share when Redis is configured.

Layout (all keys under the `quorum:` prefix, values JSON):

    quorum:profile:current            the current profile (PROFILE_KEY)
    quorum:profile:version            its version string, a few bytes: what the hot path reads
    quorum:profile:history            hash version -> profile JSON: every profile ever published
    quorum:profile:versions           list of versions, oldest first
    <key>                             put_json/get_json values (plain strings)
    <key>                             incr/counters groups (hashes of float counters)

Picking up a new profile without a restart: the router calls `current_profile()` on every
decision. This store keeps the last profile in process and, per call, reads only the small version
key (one GET round trip); the profile itself is fetched again only when that version changes. With
`profile_ttl_s > 0` even the GET is skipped for that long (a new profile then shows up within the
TTL). `publish_profile` writes profile, version and history in one MULTI/EXEC transaction, so a
reader never sees a version without its profile.

Connection problems surface as `StateStoreUnavailableError` (HTTP 503), whose message names the URL
(password removed) and how to start Redis — never as a raw redis-py exception.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from experts.errors import QuorumError
from skills.store import PROFILE_KEY, StateStore

__all__ = ["PROFILE_HISTORY_KEY", "PROFILE_VERSIONS_KEY", "PROFILE_VERSION_KEY",
           "RedisStateStore", "StateStoreUnavailableError"]  # fmt: skip

log = logging.getLogger(__name__)

PROFILE_VERSION_KEY = "quorum:profile:version"
PROFILE_HISTORY_KEY = "quorum:profile:history"
PROFILE_VERSIONS_KEY = "quorum:profile:versions"

T = TypeVar("T")


class StateStoreUnavailableError(QuorumError):
    """The shared state store (Redis) cannot be reached or answered with an error."""

    status = 503
    type = "server_error"
    code = "state_store_unavailable"


def redact_url(url: str) -> str:
    """`url` with any password replaced by `***`, safe to put in messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def _start_hint(url: str) -> str:
    port = urlsplit(url).port or 6379
    return (
        f"start Redis (e.g. `redis-server --port {port} --daemonize yes`; install it with "
        "`apt-get install -y redis-server`) or unset QUORUM_REDIS_URL / --redis-url to keep state "
        "in process"
    )


class RedisStateStore(StateStore):
    """Redis-backed `StateStore`. Build with `from_url`; pass a client directly in tests.

    Thread-safe: redis-py clients hold a connection pool, and the profile cache has its own lock.
    """

    def __init__(self, client: Any, *, url: str = "redis://?", profile_ttl_s: float = 0.0) -> None:
        self._client = client
        self.url = redact_url(url)
        self.profile_ttl_s = profile_ttl_s
        self._lock = threading.Lock()
        self._cached_version: str | None = None
        self._cached_raw: str | None = None
        self._checked_at = float("-inf")

    @classmethod
    def from_url(
        cls, url: str, *, profile_ttl_s: float = 0.0, timeout_s: float = 2.0, check: bool = True
    ) -> RedisStateStore:
        """Connect to `url` (`redis://[:password@]host:port/db`); with `check`, PING it now so a
        wrong URL fails at startup rather than on the first request."""
        try:
            import redis
        except ImportError as exc:  # a declared dependency; only a broken install lacks it
            raise ImportError(f"the Redis state store needs redis-py ({exc}); "
                              "install it with `pip install 'redis>=5'`") from exc  # fmt: skip
        try:
            client = redis.Redis.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                decode_responses=True, health_check_interval=30,
            )  # fmt: skip
        except ValueError as exc:
            raise StateStoreUnavailableError(
                f"invalid Redis URL {redact_url(url)!r}: {exc}; expected redis://host:port/db",
                param="redis_url",
            ) from None
        store = cls(client, url=url, profile_ttl_s=profile_ttl_s)
        if check:
            store.ping()
        return store

    # -- plumbing ---------------------------------------------------------------------------

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        import redis

        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StateStoreUnavailableError(
                f"Redis at {self.url} is unreachable while trying to {what} "
                f"({type(exc).__name__}: {exc}); {_start_hint(self.url)}"
            ) from None
        except redis.RedisError as exc:
            raise StateStoreUnavailableError(
                f"Redis at {self.url} failed to {what}: {type(exc).__name__}: {exc}"
            ) from None

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        with self._errors(what):
            return fn()

    def ping(self) -> None:
        """Round-trip to Redis; raises `StateStoreUnavailableError` when it is not there."""
        self._call("PING", self._client.ping)

    def close(self) -> None:
        """Release the connection pool."""
        self._client.close()

    # -- StateStore -------------------------------------------------------------------------

    def get_json(self, key: str) -> Any | None:
        raw = self._call(f"GET {key}", lambda: self._client.get(key))
        return None if raw is None else json.loads(raw)

    def put_json(self, key: str, value: Any, ttl_s: float | None = None) -> None:
        if key == PROFILE_KEY:  # keep version key and history consistent with the profile
            self.publish_profile(value)
            return
        raw = json.dumps(value)
        expiry = None if ttl_s is None else max(1, int(ttl_s * 1000))
        self._call(f"SET {key}", lambda: self._client.set(key, raw, px=expiry))

    def incr(self, key: str, field: str, amount: float = 1.0) -> float:
        return float(
            self._call(f"HINCRBYFLOAT {key}", lambda: self._client.hincrbyfloat(key, field, amount))
        )

    def counters(self, key: str) -> dict[str, float]:
        raw = self._call(f"HGETALL {key}", lambda: self._client.hgetall(key))
        return {k: float(v) for k, v in raw.items()}

    # -- profiles ---------------------------------------------------------------------------

    def publish_profile(self, profile: dict) -> None:
        """Make `profile` current and append it to the history, atomically.

        `profile["version"]` is required: it is what running routers compare to notice the change.
        """
        version = profile.get("version") if isinstance(profile, dict) else None
        if not isinstance(version, str) or not version:
            raise ValueError("a published profile needs a non-empty string 'version'")
        raw = json.dumps(profile)

        def write() -> None:
            pipe = self._client.pipeline(transaction=True)
            pipe.set(PROFILE_KEY, raw)
            pipe.set(PROFILE_VERSION_KEY, version)
            if not self._client.hexists(PROFILE_HISTORY_KEY, version):
                pipe.rpush(PROFILE_VERSIONS_KEY, version)
            pipe.hset(PROFILE_HISTORY_KEY, version, raw)
            pipe.execute()

        self._call("publish a profile", write)
        log.info("published profile %s to %s", version, self.url)

    def current_profile(self) -> dict | None:
        """The current profile; costs one small GET when nothing changed (see module docstring)."""
        now = time.monotonic()
        with self._lock:
            fresh = now - self._checked_at < self.profile_ttl_s
            cached_version, cached_raw = self._cached_version, self._cached_raw
        if fresh:
            return None if cached_raw is None else json.loads(cached_raw)
        version = self._call("read the profile version",
                             lambda: self._client.get(PROFILE_VERSION_KEY))  # fmt: skip
        if version is not None and version == cached_version and cached_raw is not None:
            raw = cached_raw
        elif version is None:
            raw = None
        else:
            # MGET is atomic: the profile and the version it carries belong together.
            version, raw = self._call(
                "read the profile",
                lambda: self._client.mget([PROFILE_VERSION_KEY, PROFILE_KEY]),
            )
        with self._lock:
            self._cached_version, self._cached_raw, self._checked_at = version, raw, now
        # A fresh object per call, as InMemoryStateStore gives: callers may not share state.
        return None if raw is None else json.loads(raw)

    def profile_versions(self) -> list[str]:
        """Every published version, oldest first."""
        versions = self._call("list profile versions",
                              lambda: self._client.lrange(PROFILE_VERSIONS_KEY, 0, -1))  # fmt: skip
        # Two publishers of one version at the same instant may both append it; show it once.
        return list(dict.fromkeys(versions))

    def profile(self, version: str) -> dict | None:
        """A past (or the current) profile by version; None if it was never published."""
        raw = self._call("read a past profile",
                         lambda: self._client.hget(PROFILE_HISTORY_KEY, version))  # fmt: skip
        return None if raw is None else json.loads(raw)
