"""Integration fixtures: real servers, started here and stopped after."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from experts.paths import OFFLINE_ENV
from serving.serve_options import unused_port

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A port for a server a test starts: `serving.serve_options.unused_port` (not the kernel's
    ephemeral pick, which Ray or vLLM may take before the server binds it)."""
    return unused_port()


def start_quorum(port: int, *args: str, timeout: float = 900) -> tuple[subprocess.Popen, Path]:
    """`quorum serve` in a subprocess, waited on until it is ready; its log file returned.

    Ready means the banner ("Quorum is up"), which `quorum serve` prints once Serve reports every
    deployment running (each hosted expert's engine loaded), and /health answering. /health alone
    answers as soon as the ingress is up, while engines may load for minutes more on a loaded
    machine: a first request then meets a first-token timeout (seen in a test run here).

    It starts with SIGINT ignored, as `quorum serve &` in a script starts it (a non-interactive
    shell ignores SIGINT in background commands, and Python then installs no KeyboardInterrupt):
    `stop` still expects it to shut down on SIGINT."""
    log = Path(os.environ.get("QUORUM_TEST_LOGS", "/tmp")) / f"quorum-serve-{port}.log"
    env = os.environ | OFFLINE_ENV | {"PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "serve", "--port", str(port), *args],
        cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=_ignore_sigint,
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"quorum serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
            )
        try:
            if "Quorum is up" in log.read_text() and (
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
            ):
                return proc, log
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop(proc)
    raise RuntimeError(f"quorum serve did not come up in {timeout}s:\n{log.read_text()[-4000:]}")


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def stop(proc: subprocess.Popen) -> bool:
    """SIGINT to `quorum serve` alone (as `kill -INT` sends it); whether it shut down by itself
    within 60 s. Whatever is left of its process group is killed either way."""
    graceful = True
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            graceful = False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return graceful


@pytest.fixture(scope="module")
def quorum_default():
    """The embedded default (both tiny models on vLLM CPU) behind `quorum serve`, for one test
    module: stopped when the module ends, so it does not run (a Ray instance, two engines)
    beside later modules' own clusters, such as the node-loss test's two timing-sensitive nodes."""
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'quorum[cpu]')")
    port = free_port()
    proc, log = start_quorum(port)
    yield f"http://127.0.0.1:{port}", log
    assert stop(proc) and "shutting down" in log.read_text(), "quorum serve ignored SIGINT"
