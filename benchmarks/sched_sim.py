"""Scheduling simulator: the live scheduler's policy code (`serving.schedule_policy`) over measured costs.

    python -m benchmarks.sched_sim [--costs benchmarks/sched_costs.json] [--requests 2000]

A discrete-event simulation of one device pool with S slots and E experts. Everything the
scheduler decides is decided by the same `Policy.plan` the live `Scheduler` calls; only time is
simulated: a swap takes the measured evict + load time, a batch of b requests the measured time
of a batch of that size on a vLLM CPU engine (a least-squares line through the measured sizes). The trace (Poisson arrivals, prompts drawn from the bundled
MMLU-Pro dev data, the expert given by the prompt's category) comes from `make_trace`, which the
live benchmark (`benchmarks/scheduling.py`) uses too.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from serving.schedule_policy import POLICIES, Dispatch, ExpertState, Policy, SchedulerConfig, Swap

COSTS = Path(__file__).with_name("sched_costs.json")


@dataclass(frozen=True)
class Arrival:
    t: float
    expert: str
    prompt: str
    id: str


def make_trace(n: int, rate: float, experts: list[str], seed: int = 0,
               rows: list[dict] | None = None) -> list[Arrival]:  # fmt: skip
    """`n` Poisson arrivals at `rate`/s with MMLU-Pro dev prompts. A prompt goes to the expert of
    its category (categories dealt round-robin to experts; with more experts than categories a
    category is split between experts by a hash of the question id)."""
    if rows is None:
        from router.train import read_rows

        rows = read_rows()
    rng = random.Random(seed)
    cats = sorted({r["category"] for r in rows})
    split = max(1, math.ceil(len(experts) / len(cats)))
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        row = rng.choice(rows)
        h = int(hashlib.sha256(row["id"].encode()).hexdigest()[:8], 16)
        slot = cats.index(row["category"]) + len(cats) * (h % split)
        out.append(Arrival(t, experts[slot % len(experts)], row["prompt"], row["id"]))
    return out


@dataclass(frozen=True)
class Costs:
    """Swap seconds (evict + load) and seconds per batch by batch size, as measured."""

    swap_s: float
    batch_s: dict[int, float]

    @classmethod
    def load(cls, path: Path = COSTS) -> Costs:
        data = json.loads(Path(path).read_text())
        return cls(float(data["swap_s"]), {int(k): float(v) for k, v in data["batch_s"].items()})

    def batch(self, size: int) -> float:
        """Seconds for a batch of `size`: the least-squares line through the measured (size,
        seconds) points (live batches are few and noisy, so a line rather than interpolation),
        never below 10 % of the smallest measured time."""
        sizes = sorted(self.batch_s)
        if len(sizes) == 1:
            return self.batch_s[sizes[0]]
        mb = sum(sizes) / len(sizes)
        mt = sum(self.batch_s[b] for b in sizes) / len(sizes)
        slope = sum((b - mb) * (self.batch_s[b] - mt) for b in sizes) / sum(
            (b - mb) ** 2 for b in sizes
        )
        floor = 0.1 * min(self.batch_s.values())
        return max(floor, mt + max(slope, 0.0) * (size - mb))


@dataclass
class SimResult:
    policy: str
    latencies: list[float]
    makespan: float
    swaps: int
    batches: int
    max_wait: float
    answered: int

    @property
    def throughput(self) -> float:
        return self.answered / self.makespan if self.makespan else 0.0


class _Queued(NamedTuple):
    enqueued: float  # arrival time
    index: int  # position in the trace


def simulate(policy: Policy, trace: list[Arrival], slots: int, costs: Costs) -> SimResult:
    """Replay `trace` under `policy`; every request is answered (or this raises)."""
    names = sorted({a.expert for a in trace})
    states = {n: ExpertState(n) for n in names}
    events: list[tuple[float, int, str, object]] = []
    seq = 0

    def push(t: float, kind: str, payload: object) -> None:
        nonlocal seq
        heapq.heappush(events, (t, seq, kind, payload))
        seq += 1

    for i, a in enumerate(trace):
        push(a.t, "arrive", i)
    done: dict[int, float] = {}
    waits: list[float] = []
    swaps = batches = 0
    timers: set[float] = set()
    now = 0.0
    while events:
        now = events[0][0]
        while events and events[0][0] == now:  # apply everything that happens at `now`
            _, _, kind, payload = heapq.heappop(events)
            if kind == "arrive":
                a = trace[payload]
                states[a.expert].queue.append(_Queued(a.t, payload))
            elif kind == "batch":
                name, idx = payload
                states[name].batch_done(now)
                for i in idx:
                    done[i] = now
            elif kind == "swap":
                states[payload].loaded(now)
            else:
                timers.discard(payload)
        plan = policy.plan(now, [s.view() for s in states.values()], slots)
        for action in plan.actions:
            if isinstance(action, Dispatch):
                s = states[action.expert]
                jobs = s.take(action.size)
                waits.extend(now - j.enqueued for j in jobs)
                s.dispatched(now)
                batches += 1
                push(now + costs.batch(len(jobs)), "batch", (s.name, [j.index for j in jobs]))
            elif isinstance(action, Swap):
                if action.evict is not None:
                    states[action.evict].resident = False
                states[action.load].loading = True
                swaps += 1
                push(now + costs.swap_s, "swap", action.load)
        if plan.wake_at is not None and plan.wake_at not in timers:
            timers.add(plan.wake_at)
            push(plan.wake_at, "timer", plan.wake_at)
    if len(done) != len(trace):
        raise RuntimeError(f"{policy.name}: {len(trace) - len(done)} of {len(trace)} unanswered")
    lat = [done[i] - a.t for i, a in enumerate(trace)]
    return SimResult(policy.name, lat, max(done.values()) - trace[0].t, swaps, batches,
                     max(waits, default=0.0), len(done))  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))] if s else float("nan")


def run_grid(costs: Costs, n: int, rate: float, grid: list[tuple[int, int]], seed: int,
             config: SchedulerConfig) -> list[dict]:  # fmt: skip
    from router.train import read_rows

    rows = read_rows()
    out = []
    for e, s in grid:
        experts = [f"expert-{i:02d}" for i in range(e)]
        trace = make_trace(n, rate, experts, seed, rows)
        cfg = SchedulerConfig(**{**config.__dict__, "slots": s, "swap_cost_s": costs.swap_s})
        results = {p: simulate(POLICIES[p](cfg), trace, s, costs) for p in ("fifo", "batch")}
        for name, r in results.items():
            out.append({"E": e, "S": s, "policy": name, "throughput": r.throughput,
                        "p50": percentile(r.latencies, 50), "p95": percentile(r.latencies, 95),
                        "swaps": r.swaps, "batches": r.batches, "max_wait": r.max_wait,
                        "answered": r.answered, "n": n,
                        "speedup": r.throughput / results["fifo"].throughput})  # fmt: skip
    return out


def table(rows: list[dict]) -> str:
    lines = ["| E | S | policy | answered | throughput (req/s) | vs FIFO | p50 latency (s) | "
             "p95 latency (s) | max queue wait (s) | swaps | batches |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['E']} | {r['S']} | {r['policy']} | {r['answered']}/{r['n']} | "
                     f"{r['throughput']:.3f} | {r['speedup']:.1f}x | {r['p50']:.0f} | "
                     f"{r['p95']:.0f} | {r['max_wait']:.0f} | {r['swaps']} | {r['batches']} |")  # fmt: skip
    return "\n".join(lines)


def _overload_note(rows: list[dict], rate: float) -> str:
    """Which batch-policy rows fell behind the arrival rate (throughput < 95% of it)."""
    behind = [f"E={r['E']}, S={r['S']}" for r in rows
              if r["policy"] == "batch" and r["throughput"] < 0.95 * rate]  # fmt: skip
    if not behind:
        return "Here batch-by-expert keeps up with the arrivals in every row."
    return "Here batch-by-expert falls behind the arrivals at " + "; ".join(behind) + "."


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--costs", type=Path, default=COSTS, help="measured costs (JSON)")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--rate", type=float, default=0.03, help="arrivals per second")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-wait-s", type=float, default=7200.0)
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = p.parse_args(argv)
    costs = Costs.load(args.costs)
    grid = [(4, 1), (4, 2), (8, 1), (8, 2), (8, 4), (16, 1), (16, 4), (16, 8)]
    config = SchedulerConfig(max_batch_size=args.max_batch_size, max_wait_s=args.max_wait_s)
    rows = run_grid(costs, args.requests, args.rate, grid, args.seed, config)
    body = (
        f"Simulated with the live scheduler's policy code (`serving.schedule_policy`) and costs measured "
        f"on vLLM CPU (`{args.costs.name}`): swap {costs.swap_s:.1f} s; batch time by size "
        + ", ".join(f"{b}: {t:.2f} s" for b, t in sorted(costs.batch_s.items()))
        + f". {args.requests} requests per row, Poisson arrivals at {args.rate:g}/s, MMLU-Pro dev "
        f"prompts, expert by category; batch policy: max batch {args.max_batch_size}, "
        f"max_wait_s {args.max_wait_s:g}. FIFO = arrival order, one request per dispatch. "
        "Throughput is answered / (last answer - first arrival); a policy that keeps up shows the "
        "arrival rate. The wait bound holds when arrivals are below the policy's capacity and "
        "max_wait_s covers a full rotation of urgent experts, about (E / S) x (swap + batch); "
        "in overload queues grow without bound under any policy and the max queue wait exceeds "
        "it. " + _overload_note(rows, args.rate) + "\n\n" + table(rows)
    )
    print(body)
    if not args.no_write:
        from benchmarks._results import machine_description, write_section

        command = "python -m benchmarks.sched_sim" + (
            f" --requests {args.requests} --rate {args.rate:g}"
        )
        write_section("sched_sim", "Scheduling simulator (batch-by-expert vs FIFO at scale)",
                      command, machine_description() + " (simulated time)", body)  # fmt: skip


if __name__ == "__main__":
    main()
