"""Load test of a running (or freshly started) Quorum, with faults injected on demand.

    python -m benchmarks.load [--phases probe,steady,kill-replica] [--duration 300] [--rate R]
                              [--redis] [--url URL]

Without `--url` it starts `quorum serve` on the embedded default registry with two API keys
(`load`, high limit; `burst`, 5 requests/minute) and, with `--redis`, a redis-server of its own
(`QUORUM_REDIS_URL`). Phases, in the order given:

- `probe`: 30 s closed-loop at concurrency 1, 2, 4; picks the rate for the next phases (70% of the
  best measured throughput) unless `--rate` is given.
- `steady`: `--duration` s at `--rate` req/s (non-streaming, 16 tokens) plus, halfway, a burst of
  20 requests with the `burst` key (5/minute: all but 5 per minute window they reach the ingress
  in get the deliberate 429). Resident memory of
  every Quorum process (driver, Ray, ingress, router, expert replicas, engine cores) at start/end.
- `kill-replica`: 120 s of load; after 30 s the replica of the expert that answers is SIGKILLed.
- `redis-restart`: 90 s of load; after 30 s redis-server is killed and 5 s later restarted empty
  on the same port; meanwhile a batch-job-like writer keeps writing progress through
  `ResilientStateStore`; afterwards the profile and the job state are checked in Redis.

Each phase writes its section of benchmarks/RESULTS.md (`load-<phase>`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

LOAD_KEY = "sk-load-0123456789abcdef0123"
BURST_KEY = "sk-burst-0123456789abcdef012"
PROMPTS = [
    "What is 17 times 23?", "Name the capital of France.", "What does a contract need to be valid?",
    "Explain photosynthesis in one sentence.", "What is the derivative of x squared?",
    "Who wrote Hamlet?", "What is inflation?", "Define entropy briefly.",
]  # fmt: skip
PROFILE_VERSION = "load-bench-v1"


@dataclass
class Stats:
    """Outcomes of the requests of one phase."""

    latencies: list[float] = field(default_factory=list)
    status: Counter = field(default_factory=Counter)
    experts: Counter = field(default_factory=Counter)
    fallbacks: Counter = field(default_factory=Counter)
    competence: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (t, status) per request
    # (t, seconds, status, who answered or the error's code) per request, whatever its outcome
    requests: list[tuple[float, float, int, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.status.values())

    def failed(self, allowed: tuple[int, ...] = ()) -> int:
        return sum(n for s, n in self.status.items() if s != 200 and s not in allowed)

    def summary(self) -> str:
        lat = sorted(self.latencies) or [0.0]
        p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]  # noqa: E731
        return (f"{self.total} requests, status {dict(sorted(self.status.items()))}; latency of "
                f"200s p50 {statistics.median(lat):.2f} s, p95 {p(0.95):.2f} s, max {lat[-1]:.2f} "
                f"s; answered by {dict(self.experts)}; fallbacks {dict(self.fallbacks)}")  # fmt: skip


async def one_request(client, url: str, key: str, stats: Stats, t0: float) -> int:
    """One non-streaming chat request; its outcome goes into `stats`."""
    import httpx

    body = {"model": "auto", "max_tokens": 16, "temperature": 0,
            "messages": [{"role": "user", "content": random.choice(PROMPTS)}]}  # fmt: skip
    started = time.perf_counter()
    r = None
    try:
        r = await client.post(f"{url}/v1/chat/completions", json=body,
                              headers={"authorization": f"Bearer {key}"})  # fmt: skip
        status = r.status_code
    except httpx.HTTPError as exc:
        status = 0
        stats.errors.append(f"{type(exc).__name__}: {exc}"[:200])
    elapsed = time.perf_counter() - started
    stats.status[status] += 1
    stats.timeline.append((round(started - t0, 2), status))
    stats.requests.append((round(started - t0, 2), round(elapsed, 2), status, _outcome(status, r)))
    if status == 200:
        data = r.json()
        stats.latencies.append(elapsed)
        stats.experts[data["model"]] += 1
        routing = data["quorum"]["routing"]
        for f in routing.get("fallbacks", []):
            stats.fallbacks[f"{f['from']}→{f['to']} ({f['reason']})"] += 1
        stats.competence[(routing.get("recruitment") or {}).get("competence_source", "-")] += 1
    elif status:
        if status != 429 or key != BURST_KEY:
            stats.errors.append(f"HTTP {status}: {r.text[:200]}")
    return status


def _outcome(status: int, response) -> str:
    """Who answered (200), the OpenAI error's `code` (or `type`), or why there is none."""
    if status == 0:
        return "no response"
    try:
        body = response.json()
    except ValueError:
        return "not JSON"
    if status == 200:
        return str(body.get("model"))
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not {"message", "type", "code"} <= set(error):
        return "not an OpenAI error body"
    return str(error["code"] or error["type"])


async def run_load(url: str, seconds: float, rate: float | None, concurrency: int,
                   events: list[tuple[float, object]] | None = None) -> Stats:  # fmt: skip
    """`concurrency` workers for `seconds`, paced to `rate` req/s in total (None: as fast as the
    service answers). `events`: (second, fn) — `fn(client, t0)` coroutine functions, or plain
    functions run in a thread — started that many seconds into the run."""
    t0 = time.perf_counter()
    return await _load(url, lambda: time.perf_counter() - t0 < seconds, rate, concurrency, events)


async def run_load_until(url: str, event, after_s: float, rate: float | None, concurrency: int,
                         limit_s: float = 900) -> Stats:  # fmt: skip
    """Like `run_load`, but until `event` (a `threading.Event`) is set and `after_s` seconds
    more; at most `limit_s` in all, so a test waiting on state that never comes still ends."""
    t0 = time.perf_counter()
    seen: list[float] = []

    def running() -> bool:
        now = time.perf_counter()
        if event.is_set() and not seen:
            seen.append(now)
        return now - t0 < limit_s and (not seen or now - seen[0] < after_s)

    return await _load(url, running, rate, concurrency, None)


async def _load(url: str, running, rate: float | None, concurrency: int,
                events: list[tuple[float, object]] | None) -> Stats:  # fmt: skip
    import httpx

    stats = Stats()
    t0 = time.perf_counter()
    next_slot = [t0]

    async def worker(client) -> None:
        while running():
            if rate:
                slot = next_slot[0] = max(next_slot[0] + 1 / rate, time.perf_counter())
                await asyncio.sleep(max(0.0, slot - time.perf_counter()))
                if not running():
                    return
            await one_request(client, url, LOAD_KEY, stats, t0)

    async def fire(client, at: float, fn) -> None:
        await asyncio.sleep(at)
        if asyncio.iscoroutinefunction(fn):
            await fn(client, t0)
        else:
            await asyncio.to_thread(fn)

    limits = httpx.Limits(max_connections=concurrency + 32)
    async with httpx.AsyncClient(timeout=180, limits=limits) as client:
        tasks = [worker(client) for _ in range(concurrency)]
        tasks += [fire(client, at, fn) for at, fn in events or []]
        await asyncio.gather(*tasks)
    return stats


def burst_event(url: str, into: Stats, n: int = 20):
    """`n` requests at once with the `burst` key (limit 5/minute): the deliberate 429s."""

    async def fire(client, t0: float) -> None:
        await asyncio.gather(*[one_request(client, url, BURST_KEY, into, t0) for _ in range(n)])

    return fire


# -- processes --------------------------------------------------------------------------------


def quorum_processes(driver_pid: int) -> dict[int, tuple[str, int]]:
    """pid → (label, resident bytes) for the driver and every process under it."""
    import psutil

    out = {}
    try:
        root = psutil.Process(driver_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return out
    for p in procs:
        try:
            cmd = " ".join(p.cmdline()) or p.name()
            out[p.pid] = (_label(cmd, p.name()), p.memory_info().rss)
        except psutil.Error:
            continue
    return out


def _label(cmd: str, name: str) -> str:
    for marker in ("ServeReplica:", "ServeController", "ProxyActor", "EngineCore", "raylet",
                   "gcs_server", "dashboard", "log_monitor", "DashboardAgent", "runtime_env"):  # fmt: skip
        if marker in cmd or marker in name:
            i = cmd.find(marker)
            return cmd[i:].split()[0][:60] if i >= 0 else marker
    if "serving.cli" in cmd or "quorum serve" in cmd:
        return "quorum serve (driver)"
    if "ray::" in cmd:
        return cmd.split()[0][:60]
    return (name or cmd)[:40]


def rss_table(start: dict, end: dict) -> str:
    rows = ["| process | pid | RSS at start (MiB) | RSS at end (MiB) |", "|---|---|---|---|"]
    for pid in sorted(set(start) | set(end), key=lambda p: (start.get(p) or end.get(p))[0]):
        label = (start.get(pid) or end.get(pid))[0]
        fmt = lambda e: f"{e[1] / 2**20:.0f}" if e else "—"  # noqa: E731
        rows.append(f"| {label} | {pid} | {fmt(start.get(pid))} | {fmt(end.get(pid))} |")
    total = lambda d: sum(v[1] for v in d.values()) / 2**20  # noqa: E731
    rows.append(f"| **all** | | **{total(start):.0f}** | **{total(end):.0f}** |")
    return "\n".join(rows)


def replica_pid(driver_pid: int, expert: str) -> int:
    """The pid of the Serve replica process hosting `expert` (its engine core is a child)."""
    # The process title is `ray::ServeReplica:<app>:<deployment>[.<method being run>]`.
    pattern = re.compile(rf"ServeReplica:[^:\s]+:expert-{re.escape(expert)}(\.|$)")
    for pid, (label, _) in quorum_processes(driver_pid).items():
        if pattern.match(label):
            return pid
    raise RuntimeError(f"no replica process of expert {expert} found")


def kill_replica(driver_pid: int, expert: str) -> str:
    """SIGKILL the Serve replica process hosting `expert`; what was killed."""
    pid = replica_pid(driver_pid, expert)
    label = quorum_processes(driver_pid).get(pid, ("?", 0))[0]
    os.kill(pid, signal.SIGKILL)
    return f"{label} (pid {pid})"


# -- setup ------------------------------------------------------------------------------------


def write_keys(folder: Path) -> Path:
    path = folder / "keys.yaml"
    path.write_text(
        "keys:\n"
        f"  - {{name: load, key: {LOAD_KEY}, requests_per_minute: 100000}}\n"
        f"  - {{name: burst, key: {BURST_KEY}, requests_per_minute: 5}}\n"
    )
    return path


def start_redis(port: int, folder: Path) -> subprocess.Popen:
    from tests.integration.redis_fixture import start_redis as start

    return start(port, str(folder))


def publish_profile(redis_url: str, experts: list[str]) -> None:
    """A measured-looking profile, so that losing it would show in `competence_source`."""
    from skills.redis_store import RedisStateStore

    profile = {"version": PROFILE_VERSION,
               "experts": {e: {"skills": {"math": {"competence": 0.2}}} for e in experts}}  # fmt: skip
    RedisStateStore.from_url(redis_url).publish_profile(profile)


def wait_ready(url: str, experts: list[str], timeout: float = 1200) -> float:
    """Until every expert answered a request by name. /health answers as soon as the ingress is
    up, while the engines may still be loading for minutes; seconds waited."""
    import httpx

    started = time.perf_counter()
    pending = list(experts)
    while pending:
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"experts {pending} did not answer within {timeout:.0f}s")
        body = {"model": pending[0], "max_tokens": 4,
                "messages": [{"role": "user", "content": "Say hi."}]}  # fmt: skip
        try:
            r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120,
                           headers={"authorization": f"Bearer {LOAD_KEY}"})  # fmt: skip
            if r.status_code == 200:
                pending.pop(0)
                continue
        except httpx.HTTPError:
            pass
        time.sleep(5)
    return time.perf_counter() - started


# -- phases -----------------------------------------------------------------------------------


def section(name: str, title: str, body: str, command: str) -> None:
    from benchmarks._results import machine_description, write_section

    write_section(f"load-{name}", title, command, machine_description(), body)
    print(f"\n## {title}\n{body}\n", flush=True)


def probe(url: str) -> float:
    best = 0.0
    lines = []
    for c in (1, 2, 4):
        stats = asyncio.run(run_load(url, 30, None, c))
        rps = stats.status[200] / 30
        best = max(best, rps)
        lines.append(f"- concurrency {c}: {rps:.2f} answers/s; {stats.summary()}")
    rate = round(0.7 * best, 2)
    lines.append(f"\nChosen rate: {rate} req/s (70% of the best).")
    section("probe", "Load: sustainable rate probe", "\n".join(lines), "python -m benchmarks.load")
    return rate


def steady(url: str, driver: int, seconds: float, rate: float, concurrency: int, cmd: str) -> None:
    burst_stats = Stats()
    rss_start = quorum_processes(driver)
    stats = asyncio.run(run_load(url, seconds, rate, concurrency,
                                 [(seconds / 2, burst_event(url, burst_stats))]))  # fmt: skip
    rss_end = quorum_processes(driver)
    failed = stats.failed()
    body = (
        f"{seconds:.0f} s at {rate} req/s (non-streaming, max_tokens 16, {concurrency} workers, "
        f"key `load`), embedded default registry, access control on.\n\n"
        f"- Load: {stats.summary()}; achieved {stats.total / seconds:.2f} req/s\n"
        f"- **Errors: {failed}**"
        + (f" — first: {stats.errors[:3]}" if failed else "")
        + f"\n- Burst at {seconds / 2:.0f} s: 20 requests at once with key `burst` (5/minute): "
        f"status {dict(burst_stats.status)} — the 429s are the deliberate ones.\n\n"
        f"Resident memory of every Quorum process:\n\n{rss_table(rss_start, rss_end)}"
    )
    section("steady", "Load: steady run on the embedded default", body, cmd)


def kill_replica_phase(url: str, driver: int, rate: float, concurrency: int, cmd: str) -> None:
    killed: list[str] = []
    target = "smollm2-135m"  # `auto` picks it on the default registry (equal priors, cheaper)
    stats = asyncio.run(run_load(url, 120, rate, concurrency,
                                 [(30, lambda: killed.append(kill_replica(driver, target)))]))  # fmt: skip
    failed = stats.failed()
    after = [s for t, s in stats.timeline if t >= 30]
    body = (
        f"120 s at {rate} req/s; at 30 s SIGKILL of {killed[0] if killed else '(nothing)'}.\n\n"
        f"- {stats.summary()}\n- **Failed: {failed} of {stats.total} "
        f"({100 * failed / max(stats.total, 1):.2f}%)**; requests started after the kill: "
        f"{len(after)}, of which failed {sum(1 for s in after if s != 200)}"
        + (f"\n- Failures: {stats.errors[:5]}" if failed else "")
    )
    section("kill-replica", "Load: an expert replica killed mid-load", body, cmd)


def redis_restart_phase(url: str, redis_proc: subprocess.Popen, redis_port: int, folder: Path,
                        rate: float, concurrency: int, cmd: str) -> subprocess.Popen:  # fmt: skip
    """The phase; returns the redis-server process now running (the restarted one)."""
    from skills.redis_store import PROFILE_VERSION_KEY, RedisStateStore
    from skills.resilient_store import ResilientStateStore

    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    job = ResilientStateStore(RedisStateStore.from_url(redis_url, timeout_s=0.5),
                              retry_interval_s=0.5)  # fmt: skip
    holder = {"proc": redis_proc, "writes": 0, "down_s": 0.0}
    stop = [False]

    def job_writer() -> None:  # a batch job reporting progress through the resilient store
        while not stop[0]:
            holder["writes"] += 1
            job.put_json("quorum:job:load-bench", {"state": "running", "done": holder["writes"]})
            job.incr("quorum:job:load-bench:counters", "items")
            time.sleep(0.2)

    def restart() -> None:
        holder["proc"].kill()
        holder["proc"].wait()
        t = time.perf_counter()
        time.sleep(5)
        holder["proc"] = start_redis(redis_port, folder)
        holder["down_s"] = time.perf_counter() - t

    def stop_writer() -> None:
        stop[0] = True

    stats = asyncio.run(run_load(url, 90, rate, concurrency,
                                 [(0, job_writer), (30, restart), (85, stop_writer)]))  # fmt: skip
    time.sleep(2)
    job.get_json("quorum:job:load-bench")  # one call after the run: reconnect + replay if needed
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    stored = json.loads(client.get("quorum:job:load-bench") or "null")
    counted = client.hget("quorum:job:load-bench:counters", "items")
    version = client.get(PROFILE_VERSION_KEY)
    failed = stats.failed()
    body = (
        f"90 s at {rate} req/s with `QUORUM_REDIS_URL` set; at 30 s redis-server was SIGKILLed "
        f"and restarted empty (no persistence) {holder['down_s']:.1f} s later.\n\n"
        f"- {stats.summary()}\n- **Failed: {failed} of {stats.total}**"
        + (f" — {stats.errors[:5]}" if failed else "")
        + f"\n- Routing competence source per answer: {dict(stats.competence)}\n"
        f"- Profile in Redis after the restart: version {version!r} (published before the run: "
        f"{PROFILE_VERSION!r}; written back by the router's ResilientStateStore)\n"
        f"- Batch-job progress written every 0.2 s through ResilientStateStore: {holder['writes']}"
        f" writes; in Redis afterwards: done={stored and stored.get('done')}, items counter "
        f"{counted}; writes replayed by the job's store: {job.replayed}, outages seen: "
        f"{job.outages}"
    )
    section("redis-restart", "Load: Redis restarted mid-load", body, cmd)
    return holder["proc"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", default="probe,steady,kill-replica")
    parser.add_argument("--duration", type=float, default=300.0, help="steady phase, seconds")
    parser.add_argument("--rate", type=float, help="req/s (default: from the probe phase)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--redis", action="store_true", help="start redis-server, use it")
    args = parser.parse_args(argv)
    cmd = "python -m benchmarks.load " + " ".join(argv if argv is not None else sys.argv[1:])
    from tests.integration.conftest import free_port, start_quorum, stop

    folder = Path(tempfile.mkdtemp(prefix="quorum-load-"))
    os.environ["QUORUM_API_KEYS_FILE"] = str(write_keys(folder))
    redis_proc, redis_port = None, free_port()
    if args.redis:
        redis_proc = start_redis(redis_port, folder)
        os.environ["QUORUM_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
        publish_profile(os.environ["QUORUM_REDIS_URL"], ["smollm2-135m", "gemma3-270m"])
    port = free_port()
    t = time.perf_counter()
    extra = ["--redis-url", os.environ["QUORUM_REDIS_URL"]] if args.redis else []
    proc, log = start_quorum(port, *extra)
    print(f"quorum up in {time.perf_counter() - t:.0f}s (log {log})", flush=True)
    url = f"http://127.0.0.1:{port}"
    try:
        waited = wait_ready(url, ["smollm2-135m", "gemma3-270m"])
        print(f"both experts answer after {waited:.0f}s more", flush=True)
        asyncio.run(run_load(url, 10, None, 2))  # warm-up
        rate = args.rate
        for phase in args.phases.split(","):
            if phase == "probe":
                rate = args.rate or probe(url)
            elif phase == "steady":
                steady(url, proc.pid, args.duration, rate, args.concurrency, cmd)
            elif phase == "kill-replica":
                kill_replica_phase(url, proc.pid, rate, args.concurrency, cmd)
            elif phase == "redis-restart":
                if redis_proc is None:
                    raise SystemExit("the redis-restart phase needs --redis")
                redis_proc = redis_restart_phase(url, redis_proc, redis_port, folder, rate,
                                                 args.concurrency, cmd)  # fmt: skip
            else:
                raise SystemExit(f"unknown phase {phase!r}")
    finally:
        stop(proc)
        if redis_proc is not None:
            redis_proc.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
