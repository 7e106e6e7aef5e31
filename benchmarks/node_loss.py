"""Losing a Ray node under load: Quorum on a two-node Ray cluster, the worker node killed mid-load.

    python -m benchmarks.node_loss [--rate 0.25] [--kill-at 30] [--down 60]

On this machine, a Ray cluster of two nodes, each a `ray start --block` process tree
(tests/integration/ray_cluster.py):

- head (`quorum_head` resource): Serve's controller and HTTP proxy, the QuorumIngress (router in
  process; pinned by `ray_actor_options.resources` in the Serve config) and `gemma3-270m`;
- worker (`quorum_node_b` resource): `smollm2-135m`, the expert `auto` picks on the default
  registry (equal priors, cheaper), placed there by `resources.custom` in the registry.

Quorum is deployed with `serve deploy` (as on any Ray cluster). Steady `auto` load runs (16-token
non-streaming chats, benchmarks/load.py); `--kill-at` s into it every process of the worker node
gets SIGKILL at once; `--down` s later the node is started again with the same resources. The
load goes on until `smollm2-135m` is back (its breaker closed and it answered a request again)
and 20 s more. Measured: requests failed (and that each failure is an OpenAI-shaped 5xx), the
slowest request, when /health reported the lost expert's breaker open, when Serve's status and
the GCS noticed, and how long after the node's return the expert answered again.
Writes the `node-loss` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from benchmarks.load import Stats, run_load, run_load_until, wait_ready
from experts.paths import OFFLINE_ENV
from experts.registry import load_registry
from tests.integration.conftest import free_port
from tests.integration.ray_cluster import Cluster, RayNode, kill_node, start_cluster, stop_cluster

ROOT = Path(__file__).resolve().parents[1]
LOST, KEPT = "smollm2-135m", "gemma3-270m"  # on the worker node, on the head node
HEAD, NODE_B = "quorum_head", "quorum_node_b"
CLIENT_TIMEOUT_S = 180  # benchmarks/load.py's httpx timeout: a request past it counts as hanging


def write_registry(folder: Path) -> Path:
    """The embedded default, with each expert pinned to its node by a custom resource."""
    data = load_registry().model_dump(mode="json")
    for expert in data["experts"]:
        expert["resources"]["custom"] = {NODE_B if expert["name"] == LOST else HEAD: 1}
    path = folder / "registry.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def write_serve_config(folder: Path, registry: Path, http_port: int) -> Path:
    """A Serve config like infra/serve.yaml, for a cluster whose nodes share one address: the
    HTTP proxy only on the head (two proxies would want the same port), the ingress pinned there."""
    config = {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": http_port},
        "applications": [{
            "name": "quorum", "route_prefix": "/", "import_path": "serving.deployments:build_app",
            "args": {"registry": str(registry)},
            "runtime_env": {"env_vars": dict(OFFLINE_ENV)},
            "deployments": [{"name": "QuorumIngress", "num_replicas": 1,
                             "ray_actor_options": {"num_cpus": 0, "resources": {HEAD: 0.01}}}],
        }],
    }  # fmt: skip
    path = folder / "serve.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass
class QuorumCluster:
    cluster: Cluster
    worker: RayNode
    url: str
    ready_s: float  # from `ray start --head` to both experts answering

    def restart_worker(self) -> None:
        self.worker = self.cluster.add_worker("node-b", "127.0.0.3", 2, {NODE_B: 1})

    def close(self) -> None:
        stop_cluster(self.cluster, [self.worker])


def start_quorum_cluster(folder: Path) -> QuorumCluster:
    """Head + worker node, Quorum deployed with `serve deploy`, both experts answering."""
    from experts.models import prepare_builtin_models

    registry = write_registry(folder)
    prepare_builtin_models(
        [e.model.removeprefix("builtin:") for e in load_registry(registry).experts]
    )
    env = OFFLINE_ENV | {"PYTHONPATH": str(ROOT)}  # the nodes' workers import this checkout
    started = time.perf_counter()
    cluster = start_cluster(folder, 2, {HEAD: 2}, env)
    worker = None
    try:
        worker = cluster.add_worker("node-b", "127.0.0.3", 2, {NODE_B: 1})
        port = free_port()
        cluster.deploy(write_serve_config(folder, registry, port))
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, [LOST, KEPT])
    except BaseException:
        stop_cluster(cluster, [worker] if worker else [])
        raise
    return QuorumCluster(cluster, worker, url, time.perf_counter() - started)


@dataclass
class NodeLoss:
    """What happened; times are seconds since the load started."""

    stats: Stats = field(default_factory=Stats)
    killed_at: float | None = None
    killed_processes: int = 0
    returned_at: float | None = None
    back_at: float | None = None  # the lost expert's breaker closed after the return
    breaker: list[tuple[float, str | None]] = field(default_factory=list)  # /health transitions
    serve: list[tuple[float, str]] = field(default_factory=list)  # Serve's deployment status
    nodes: list[tuple[float, int]] = field(default_factory=list)  # alive nodes per the GCS
    health_errors: int = 0  # polls of /health, Serve or the GCS that got no answer

    def first(self, series: list, value, after: float | None) -> float | None:
        """When `series` first took `value` at or after `after`; None if it never did."""
        if after is None:
            return None
        return next((t for t, v in series if v == value and t >= after), None)

    def answered_by(self, expert: str, after: float | None) -> float | None:
        if after is None:
            return None
        return next((t + s for t, s, status, who in self.stats.requests
                     if status == 200 and who == expert and t >= after), None)  # fmt: skip

    def failures(self) -> list[tuple[float, float, int, str]]:
        return [r for r in self.stats.requests if r[2] != 200]


def _watch(qc: QuorumCluster, result: NodeLoss, t0: float, stop: threading.Event) -> None:
    """Poll /health (0.5 s), Serve's status and the GCS's node table (2 s); keep transitions."""
    import httpx

    last_serve = 0.0
    while not stop.is_set():
        now = time.perf_counter() - t0
        try:
            state = httpx.get(f"{qc.url}/health", timeout=5).json()["breakers"].get(LOST)
            if not result.breaker or result.breaker[-1][1] != state:
                result.breaker.append((round(now, 2), state))
        except (httpx.HTTPError, ValueError, KeyError):
            result.health_errors += 1
        if now - last_serve >= 2:
            last_serve = now
            try:
                apps = qc.cluster.serve_status()["applications"]
                status = apps["quorum"]["deployments"][f"expert-{LOST}"]["status"]
                if not result.serve or result.serve[-1][1] != status:
                    result.serve.append((round(now, 2), status))
                alive = qc.cluster.alive_nodes()
                if not result.nodes or result.nodes[-1][1] != alive:
                    result.nodes.append((round(now, 2), alive))
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                result.health_errors += 1
        stop.wait(0.5)


def run_node_loss(qc: QuorumCluster, rate: float, concurrency: int, kill_at: float,
                  down_s: float, back_limit_s: float = 900) -> NodeLoss:  # fmt: skip
    """Steady load; the worker node killed at `kill_at`, back `down_s` later; until the lost
    expert is back (or `back_limit_s` after the return) and 20 s more."""
    result = NodeLoss()
    done, stop = threading.Event(), threading.Event()
    t0 = time.perf_counter()

    def orchestrate() -> None:
        try:
            time.sleep(kill_at)
            result.killed_processes = kill_node(qc.worker)
            result.killed_at = round(time.perf_counter() - t0, 2)
            time.sleep(down_s)
            qc.restart_worker()
            result.returned_at = round(time.perf_counter() - t0, 2)
            deadline = time.perf_counter() + back_limit_s
            while time.perf_counter() < deadline:
                # Closed again after the return: a probe request was answered by the lost expert.
                back = result.first(result.breaker, "closed", result.returned_at)
                if back is not None:
                    result.back_at = back
                    return
                time.sleep(1)
        finally:
            done.set()

    threads = [threading.Thread(target=orchestrate, daemon=True),
               threading.Thread(target=_watch, args=(qc, result, t0, stop), daemon=True)]  # fmt: skip
    for thread in threads:
        thread.start()
    limit = kill_at + down_s + back_limit_s + 60
    result.stats = asyncio.run(run_load_until(qc.url, done, 20, rate, concurrency, limit))
    stop.set()
    for thread in threads:
        thread.join(30)
    return result


def report(
    result: NodeLoss, qc: QuorumCluster, rate: float, concurrency: int, down_s: float
) -> str:
    stats, killed, back = result.stats, result.killed_at, result.returned_at
    failures = result.failures()
    slowest = max((s for _, s, _, _ in stats.requests), default=0.0)
    opened = result.first(result.breaker, "open", killed)
    dead = next((t for t, n in result.nodes if killed is not None and t >= killed and n < 2), None)
    serve_off = next((t for t, s in result.serve if killed is not None and t >= killed
                      and s != "HEALTHY"), None)  # fmt: skip
    answered = result.answered_by(LOST, back)

    def after(t: float | None, since: float | None) -> str:
        return "never" if t is None or since is None else f"{t - since:.1f} s"

    phases = {"before the kill": (0, killed), "node down": (killed, back),
              "after the return": (back, float("inf"))}  # fmt: skip
    rows = ["| phase | requests | failed | answered by | slowest (s) |", "|---|---|---|---|---|"]
    for name, (lo, hi) in phases.items():
        part = [r for r in stats.requests if lo is not None and lo <= r[0] < (hi or float("inf"))]
        who: dict[str, int] = {}
        for r in part:
            if r[2] == 200:
                who[r[3]] = who.get(r[3], 0) + 1
        rows.append(f"| {name} | {len(part)} | {sum(1 for r in part if r[2] != 200)} | {who} | "
                    f"{max((r[1] for r in part), default=0):.1f} |")  # fmt: skip
    lines = [
        f"Two Ray nodes on this machine (`ray start --block` each): head with the API port "
        f"(Serve's HAProxy ingress), the QuorumIngress (router) and `{KEPT}`; worker (nice 10: "
        f"the nodes share the cores) with `{LOST}` (`auto`'s pick), placed by the "
        f"registry's `resources.custom`. Cluster up and both experts answering after "
        f"{qc.ready_s:.0f} s. Load: `auto`, non-streaming, max_tokens 16, {rate} req/s, "
        f"{concurrency} workers. At {killed} s every process of the worker node "
        f"({result.killed_processes}) got SIGKILL; the node was started again {down_s:.0f} s "
        f"later (at {back} s).",
        "",
        f"- Requests: {stats.summary()}",
        f"- **Failed: {len(failures)} of {stats.total} ({100 * len(failures) / max(stats.total, 1):.2f}%)**"
        + (f": {[(t, status, code) for t, _, status, code in failures]}" if failures else ""),
        f"- Slowest request: {slowest:.1f} s (client timeout {CLIENT_TIMEOUT_S} s; "
        f"requests without a response: {stats.status.get(0, 0)})",
        f"- `{LOST}` reported unhealthy (/health `breakers` open) {after(opened, killed)} after "
        f"the kill; Serve's deployment status left HEALTHY after {after(serve_off, killed)}; the "
        f"GCS counted the node dead after {after(dead, killed)}",
        f"- Back after the node returned: `{LOST}` answered a request {after(answered, back)} "
        f"after the return, its breaker closed after {after(result.back_at, back)}",
        f"- /health breaker transitions (s, state): {result.breaker}",
        f"- Serve status of `expert-{LOST}` (s, status): {result.serve}",
        f"- Alive nodes (s, count): {result.nodes}",
        "",
        *rows,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=0.25, help="requests/s (default 0.25)")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="most requests in flight; high enough that requests stuck on the lost node do not hold back new arrivals")
    parser.add_argument("--kill-at", type=float, default=30.0, help="s into the load")
    parser.add_argument("--down", type=float, default=60.0, help="s the node stays lost")
    args = parser.parse_args(argv)
    command = " ".join(
        ["python -m benchmarks.node_loss", *(sys.argv[1:] if argv is None else argv)]
    )
    folder = Path(tempfile.mkdtemp(prefix="qnl-"))
    qc = start_quorum_cluster(folder)
    print(f"cluster up, both experts answer after {qc.ready_s:.0f} s", flush=True)
    try:
        asyncio.run(run_load(qc.url, 10, None, 2))  # warm-up
        result = run_node_loss(qc, args.rate, args.concurrency, args.kill_at, args.down)
    finally:
        qc.close()
    from benchmarks._results import machine_description, write_section

    body = report(result, qc, args.rate, args.concurrency, args.down)
    write_section("node-loss", "Losing a Ray node under load", command, machine_description(), body)
    print(body, flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
