"""A real `redis-server` for integration tests, started on a free port and stopped after.

Import the fixtures into a test module (`from tests.integration.redis_fixture import redis_url`);
`redis_server` is shared by the session, `redis_url` hands each test an empty database.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

from tests.integration.conftest import free_port


def start_redis(port: int, workdir: str, timeout: float = 10.0) -> subprocess.Popen:
    """`redis-server` on 127.0.0.1:`port`, in memory only; returns once it answers PING."""
    import redis

    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    client = redis.Redis(port=port, socket_connect_timeout=0.2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            client.ping()
            return proc
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"redis-server did not answer PING on port {port} within {timeout}s")


def stop_redis(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """URL of a redis-server started for this test session."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    workdir = tempfile.mkdtemp(prefix="quorum-redis-")
    port = free_port()
    proc = start_redis(port, workdir)
    yield f"redis://127.0.0.1:{port}/0"
    stop_redis(proc)
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """`redis_server`, emptied before the test."""
    import redis

    client = redis.Redis.from_url(redis_server)
    client.flushdb()
    client.close()
    yield redis_server
