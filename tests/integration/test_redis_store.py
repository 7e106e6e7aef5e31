"""RedisStateStore against a real redis-server."""

from __future__ import annotations

import pickle
import threading
import time

import pytest

from skills.redis_store import RedisStateStore, StateStoreUnavailableError
from skills.store import PROFILE_KEY
from tests.integration.conftest import free_port
from tests.integration.redis_fixture import redis_server, redis_url  # noqa: F401

pytestmark = pytest.mark.integration


def _profile(version: str, competence: float = 0.5) -> dict:
    return {"version": version,
            "experts": {"a": {"skills": {"math": {"competence": competence}}}}}  # fmt: skip


def test_json_values_and_counters(redis_url):  # noqa: F811
    store = RedisStateStore.from_url(redis_url)
    assert store.get_json("quorum:test") is None
    store.put_json("quorum:test", {"x": [1, 2.5, "y"]})
    assert store.get_json("quorum:test") == {"x": [1, 2.5, "y"]}
    assert store.incr("quorum:stats", "requests") == 1.0
    assert store.incr("quorum:stats", "requests", 2.5) == 3.5
    assert store.incr("quorum:stats", "errors") == 1.0
    assert store.counters("quorum:stats") == {"requests": 3.5, "errors": 1.0}
    assert store.counters("quorum:missing") == {}


def test_values_are_shared_between_clients(redis_url):  # noqa: F811
    writer, reader = RedisStateStore.from_url(redis_url), RedisStateStore.from_url(redis_url)
    writer.publish_profile(_profile("v1"))
    assert reader.current_profile()["version"] == "v1"


def test_concurrent_counter_increments_are_not_lost(redis_url):  # noqa: F811
    store = RedisStateStore.from_url(redis_url)

    def work() -> None:
        for _ in range(200):
            store.incr("quorum:stats", "n")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.counters("quorum:stats") == {"n": 800.0}


def test_new_profile_version_is_picked_up_by_a_running_reader(redis_url):  # noqa: F811
    reader = RedisStateStore.from_url(redis_url)
    assert reader.current_profile() is None
    publisher = RedisStateStore.from_url(redis_url)
    publisher.publish_profile(_profile("2026-01-01T00:00:00Z-a", 0.2))
    assert reader.current_profile()["version"] == "2026-01-01T00:00:00Z-a"
    publisher.publish_profile(_profile("2026-01-02T00:00:00Z-b", 0.9))
    got = reader.current_profile()
    assert got["version"] == "2026-01-02T00:00:00Z-b"
    assert got["experts"]["a"]["skills"]["math"]["competence"] == 0.9
    # Callers get their own copy: mutating it does not change what the next caller sees.
    got["version"] = "mutated"
    assert reader.current_profile()["version"] == "2026-01-02T00:00:00Z-b"


def test_history_keeps_every_published_profile(redis_url):  # noqa: F811
    store = RedisStateStore.from_url(redis_url)
    for i, v in enumerate(["v1", "v2", "v3"]):
        store.publish_profile(_profile(v, i / 10))
    store.publish_profile(_profile("v2", 0.7))  # republishing makes v2 current again
    assert store.profile_versions() == ["v1", "v2", "v3"]
    assert store.profile("v1")["experts"]["a"]["skills"]["math"]["competence"] == 0.0
    assert store.profile("v2")["experts"]["a"]["skills"]["math"]["competence"] == 0.7
    assert store.current_profile()["version"] == "v2"
    assert store.profile("nope") is None


def test_put_json_on_the_profile_key_publishes(redis_url):  # noqa: F811
    store = RedisStateStore.from_url(redis_url)
    store.publish_profile(_profile("v1"))
    assert store.current_profile()["version"] == "v1"
    store.put_json(PROFILE_KEY, _profile("v2"))  # the StateStore base class's generic path
    assert store.current_profile()["version"] == "v2"
    assert store.profile_versions() == ["v1", "v2"]


def test_profile_without_version_is_refused(redis_url):  # noqa: F811
    store = RedisStateStore.from_url(redis_url)
    with pytest.raises(ValueError, match="version"):
        store.publish_profile({"experts": {}})


def test_ttl_delays_pickup_by_at_most_the_ttl(redis_url):  # noqa: F811
    reader = RedisStateStore.from_url(redis_url, profile_ttl_s=0.3)
    writer = RedisStateStore.from_url(redis_url)
    writer.publish_profile(_profile("v1"))
    assert reader.current_profile()["version"] == "v1"
    writer.publish_profile(_profile("v2"))
    assert reader.current_profile()["version"] == "v1"  # within the TTL: no round trip
    time.sleep(0.35)
    assert reader.current_profile()["version"] == "v2"


def test_unreachable_redis_raises_a_typed_error_naming_url_and_fix():
    url = f"redis://:secret@127.0.0.1:{free_port()}/0"
    with pytest.raises(StateStoreUnavailableError) as info:
        RedisStateStore.from_url(url, timeout_s=0.5)
    err = info.value
    assert err.status == 503
    assert f"127.0.0.1:{urlport(url)}" in err.message
    assert "redis-server --port" in err.message
    assert "secret" not in err.message
    again = pickle.loads(pickle.dumps(err))  # crosses Ray actors
    assert type(again) is StateStoreUnavailableError and again.message == err.message


def test_redis_going_away_later_raises_the_typed_error(redis_server):  # noqa: F811
    from tests.integration.redis_fixture import start_redis, stop_redis

    port = free_port()
    proc = start_redis(port, "/tmp")
    store = RedisStateStore.from_url(f"redis://127.0.0.1:{port}/0", timeout_s=0.5)
    store.put_json("k", 1)
    stop_redis(proc)
    with pytest.raises(StateStoreUnavailableError, match="unreachable"):
        store.get_json("k")


def urlport(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])
