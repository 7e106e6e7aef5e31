"""A real multi-node Ray cluster on this machine: each node a `ray start --block` process tree of
its own (raylet, agents, workers, vLLM engine cores), so a node can be lost whole, with SIGKILL.

Every node gets its own loopback address (127.0.0.2, 127.0.0.3, ...: Ray replaces 127.0.0.1 with
the machine's network address, these it keeps, so no traffic leaves the loopback interface) and
free ports, and the cluster its own temp dir, so it never meets a Ray instance that something
else on the machine runs (`ray stop` would kill those too: never used here). The GCS address
lands in that temp dir, not in /tmp/ray, so a plain `ray.init()` elsewhere on the machine does not
join this cluster. Ray's token authentication is off (RAY_AUTH_MODE=disabled): nothing here is
reachable from another machine, and the tests read the dashboard's REST API without a token.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from serving.serve_options import HAPROXY_PORTS, SERVE_ENV
from tests.integration.conftest import free_port

RAY = str(Path(sys.executable).with_name("ray"))
# Serve's process options, as infra/serve.yaml says to start a cluster (serving/serve_options.py).
ENV = {"RAY_AUTH_MODE": "disabled"} | SERVE_ENV
SERVE = str(Path(sys.executable).with_name("serve"))


@dataclass
class RayNode:
    name: str
    proc: subprocess.Popen
    log: Path

    def processes(self) -> list:
        """The node's processes now: `ray start` and everything under it."""
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []


class NodeStartFailed(RuntimeError):
    """`ray start` exited, or did not say it started in time; its log's tail is the message."""


def _start(name: str, ip: str, args: list[str], folder: Path, env: dict[str, str],
           timeout: float = 120, nice: int = 0, log_name: str | None = None) -> RayNode:  # fmt: skip
    log = folder / (log_name or f"ray-{name}.log")
    # HAProxy's own ports, per node: these nodes share one machine (and may meet another Serve).
    haproxy_ports = {key: str(free_port()) for key in HAPROXY_PORTS}
    proc = subprocess.Popen(
        [*(["nice", "-n", str(nice)] if nice else []), RAY, "start", "--block",
         "--disable-usage-stats", "--node-ip-address", ip,
         "--temp-dir", str(folder / "ray"), "--object-store-memory", str(200 * 2**20),
         "--dashboard-agent-listen-port", str(free_port()),
         "--metrics-export-port", str(free_port()), *args],
        env=os.environ | ENV | haproxy_ports | env, stdout=log.open("w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    node = RayNode(name, proc, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _kill_group(proc)  # what it started before failing (a raylet, agents)
            raise NodeStartFailed(f"ray node {name} exited with {proc.returncode}:\n{_tail(log)}")
        if "Ray runtime started" in log.read_text(errors="replace"):
            return node
        time.sleep(0.5)
    kill_node(node)
    _kill_group(proc)
    raise NodeStartFailed(f"ray node {name} did not start within {timeout:g}s:\n{_tail(log)}")


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group `ray start` led (start_new_session), its orphans included."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


@dataclass
class Cluster:
    """A head node and worker nodes; `gcs` is the address workers join, `dashboard` Serve's REST
    API (what `serve deploy` talks to)."""

    folder: Path
    env: dict[str, str]
    head: RayNode
    gcs: str
    dashboard: str

    def add_worker(self, name: str, ip: str, num_cpus: int, resources: dict[str, float],
                   attempts: int = 3) -> RayNode:  # fmt: skip
        """A worker node at loopback address `ip` (e.g. 127.0.0.3) joining the cluster.

        A node that fails to start is started again, up to `attempts` times in all, as a node's
        supervisor (systemd, Kubernetes) would: on a loaded machine a joining raylet can miss the
        fixed 30 s Ray gives it to register with the GCS, and `ray start` then exits with "The
        current node timed out during startup" (a CI run's node-loss test, 2026-12-06). Each
        attempt has its own log, ray-NAME.log, ray-NAME-2.log, ...

        Its processes run at a lower CPU priority (nice 10) than the head's: the nodes share this
        machine's cores, and a worker's vLLM engine starting again after a node loss would
        otherwise take CPU from the head's engine, which a separate machine never does (in CI
        with equal priority, requests after the node's return timed out while its engine
        loaded; benchmarks/RESULTS.md, section `node-loss`)."""
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {attempts}")
        args = ["--address", self.gcs, "--num-cpus", str(num_cpus),
                "--resources", json.dumps(resources)]  # fmt: skip
        def start(attempt: int) -> RayNode:
            log_name = f"ray-{name}.log" if attempt == 1 else f"ray-{name}-{attempt}.log"
            return _start(name, ip, args, self.folder, self.env, nice=10, log_name=log_name)

        for attempt in range(1, attempts):
            try:
                return start(attempt)
            except NodeStartFailed:
                continue  # started again below, with its own log
        return start(attempts)  # the last attempt's failure is the caller's

    def deploy(self, config: Path, timeout: float = 120) -> None:
        """`serve deploy`: the cluster's Serve controller takes the config and starts the app."""
        subprocess.run([SERVE, "deploy", str(config), "--address", self.dashboard],
                       env=os.environ | ENV | self.env, check=True, timeout=timeout,
                       capture_output=True)  # fmt: skip

    def serve_status(self) -> dict:
        """Serve's own view (`GET /api/serve/applications/`): per deployment its status and
        replica states."""
        import httpx

        return httpx.get(f"{self.dashboard}/api/serve/applications/", timeout=10).json()

    def alive_nodes(self) -> int:
        """Nodes the GCS counts as alive (Ray's state API, `GET /api/v0/nodes`)."""
        import httpx

        r = httpx.get(f"{self.dashboard}/api/v0/nodes", timeout=10)
        return sum(1 for n in r.json()["data"]["result"]["result"] if n["state"] == "ALIVE")


def start_cluster(folder: Path, head_cpus: int, head_resources: dict[str, float],
                  env: dict[str, str]) -> Cluster:  # fmt: skip
    """A head node at 127.0.0.2 with a dashboard (Serve's REST API) on 127.0.0.1, free ports."""
    port, dashboard = free_port(), free_port()
    head = _start("head", "127.0.0.2", ["--head", "--port", str(port), "--num-cpus", str(head_cpus),
                           "--resources", json.dumps(head_resources), "--include-dashboard", "true",
                           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
                           "--ray-client-server-port", str(free_port())], folder, env)  # fmt: skip
    return Cluster(folder, env, head, f"127.0.0.2:{port}", f"http://127.0.0.1:{dashboard}")


def kill_node(node: RayNode) -> int:
    """Lose the node: SIGKILL every process of it at once (a machine that loses power). The
    number of processes killed."""
    procs = node.processes()
    for p in procs:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    node.proc.wait(30)
    return len(procs)


def stop_cluster(cluster: Cluster, workers: list[RayNode]) -> None:
    """Stop every node: SIGTERM lets `ray start --block` stop its own processes; whatever is
    still there after 30 s is killed."""
    import psutil

    nodes = [*workers, cluster.head]
    procs = [p for node in nodes for p in node.processes()]
    for node in nodes:
        if node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=30)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
