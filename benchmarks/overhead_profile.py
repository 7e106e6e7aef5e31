"""Where a Quorum request's time goes: CPU per request of each process, and py-spy samples of the
ingress replica and the Serve proxy by stage. Used by `python -m benchmarks.overhead --profile`.

For each Quorum cell (auto and named, c=1 and 32, short and long prompts) it runs the load again
while `py-spy record` samples the two processes (on-CPU samples only), and reads their CPU time
from /proc before and after. A sample is charged to the stage of its innermost frame that belongs
to a known module (`STAGES`, first match from the leaf up): the expert call's JSON parsing counts
as JSON, the tokenizer under the classifier as classification.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

from benchmarks.http_load import closed_loop

# (stage, pattern on "function (file:line)"), tried in order on each frame from the leaf up.
STAGES: list[tuple[str, str]] = [
    (
        "classify (encoder + head)",
        r"router/(classify|static_encoder)\.py|\bsentence_transformers/|\btorch/|"
        r"\btransformers/|\btokenizers/|\bnumpy/",
    ),
    ("recruit (router/recruit, policies)", r"router/(recruit|policies|live_policy)\.py|\bskills/"),
    ("route batching (router/router.py)", r"router/router\.py"),
    ("metrics (Ray metrics API)", r"serving/metrics\.py|\bray/util/metrics"),
    ("routing audit", r"serving/audit\.py"),
    ("feedback record", r"serving/feedback\.py"),
    ("auth", r"serving/(auth|limits)\.py"),
    ("JSON encode/decode", r"\bjson/|\borjson"),
    ("parse + validate (protocol, pydantic)", r"serving/protocol\.py|\bpydantic"),
    ("expert call (httpx client)", r"\b(httpx|httpcore|h11|anyio)/|experts/clients\.py"),
    ("pipeline + dispatch + ingress", r"serving/(pipeline|dispatch|ingress|observe)\.py"),
    ("FastAPI / Starlette", r"\b(fastapi|starlette)/"),
    ("HTTP server (uvicorn)", r"\buvicorn/|httptools"),
    ("Ray Serve (proxy, replica, handles)", r"\bray/serve/"),
    ("Ray core (actor calls, RPC)", r"\bray/|\bgrpc"),
    ("event loop (asyncio/uvloop)", r"\basyncio/|uvloop|\bselectors\.py"),
    ("logging", r"\blogging/"),
]
# py-spy names files relative to their sys.path entry: "handle (ray/serve/_private/proxy.py:1)".
_COMPILED = [(name, re.compile(p)) for name, p in STAGES]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def find_pid(pattern: str) -> int | None:
    """The pid of the (one) process whose command line matches `pattern` (Ray's actor titles)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if re.search(pattern, cmd):
                return int(entry.name)
    return None


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def stage_of(stack: str) -> str:
    for frame in reversed(stack.split(";")):
        for name, pattern in _COMPILED:
            if pattern.search(frame):
                return name
    return "other"


def read_samples(path: Path) -> Counter:
    stages: Counter = Counter()
    if not path.exists():
        return stages
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if count.isdigit():
            stages[stage_of(stack)] += int(count)
    return stages


def profile_cell(target, body: bytes, concurrency: int, seconds: float, pids: dict[str, int],
                 spy: str) -> tuple[int, dict]:  # fmt: skip
    """One cell under py-spy: requests served, and per process (CPU s, stage samples)."""
    out = Path(tempfile.mkdtemp(prefix="overhead-pyspy-"))
    spies = {name: subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--duration", str(int(seconds) + 1), "--rate", "250",
         "--format", "raw", "--output", str(out / f"{name}.txt"), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for name, pid in pids.items()}  # fmt: skip
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    result = asyncio.run(closed_loop(target.url, body, concurrency, seconds, target.headers))
    after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    for proc in spies.values():
        proc.wait(60)
    stats = {name: (after[name] - before[name], read_samples(out / f"{name}.txt")) for name in pids}
    shutil.rmtree(out, ignore_errors=True)
    return len(result.latencies), stats


def profile_quorum(
    group: list, prompts: dict[str, str], seconds: float, pids: dict[str, int] | None = None
) -> str:
    """The breakdown table (markdown) for Quorum's cells; `group` = [auto, named] targets;
    `pids`: the processes to sample (default: Quorum's ingress replica, and whichever of Serve's
    Python proxy and HAProxy is running; HAProxy is not Python, so it gets CPU time only)."""
    spy = shutil.which("py-spy") or str(Path(os.sys.executable).with_name("py-spy"))
    if pids is None:
        found = {"ingress": find_pid(r"ServeReplica:\w+:QuorumIngress"),
                 "proxy": find_pid(r"ProxyActor"), "haproxy": find_pid(r"(^|/)haproxy -")}  # fmt: skip
        pids = {name: pid for name, pid in found.items() if pid or name == "ingress"}
    if not all(pids.values()) or not Path(spy).exists():
        return f"(profile skipped: py-spy at {spy}, processes {pids})"
    stages = [name for name, _ in STAGES] + ["other"]
    header = ["| stage (ms of CPU per request) |"]
    rule = ["|---|"]
    columns: list[dict[str, float]] = []
    totals: list[str] = []
    for target in group:
        for concurrency, prompt in ((1, "short"), (1, "long"), (32, "short"), (32, "long")):
            served, stats = profile_cell(target, target.body(prompts[prompt]), concurrency,
                                         seconds, pids, spy)  # fmt: skip
            header.append(f" {target.name.removeprefix('quorum ')} c={concurrency} {prompt} |")
            rule.append("---|")
            column: dict[str, float] = {}
            total_ms = []
            for name, (cpu, samples) in stats.items():
                per_request = cpu * 1000 / max(served, 1)
                total_ms.append(f"{name} {per_request:.2f}")
                n = sum(samples.values()) or 1
                for stage, count in samples.items():
                    key = f"{name}: {stage}"
                    column[key] = column.get(key, 0.0) + per_request * count / n
            columns.append(column)
            totals.append(f"{' / '.join(total_ms)} ({served} requests)")
    lines = ["".join(header), "".join(rule)]
    lines.append(
        f"| **CPU ms per request: {' / '.join(pids)}** |" + "".join(f" {t} |" for t in totals)
    )
    for process in pids:
        for stage in stages:
            key = f"{process}: {stage}"
            if any(c.get(key, 0.0) >= 0.05 for c in columns):
                lines.append(f"| {key} |" + "".join(f" {c.get(key, 0.0):.2f} |" for c in columns))
    intro = (
        "Where the time goes (`--profile`): one more run of each Quorum cell while `py-spy record` "
        "(250 Hz, on-CPU samples) samples the processes named in the first row; their CPU "
        "seconds (from /proc) divided by requests served, split by the share of samples whose "
        "innermost known frame is in each stage. At c=1 the rest of a request's latency is "
        "waiting (the stub, the client, the other processes on the 2 cores).\n\n"
    )
    return intro + "\n".join(lines)
