"""Live scheduling benchmark: batch-by-expert vs FIFO per-request dispatch on real vLLM CPU engines.

    python -m benchmarks.scheduling [--experts 4] [--slots 1] [--requests 16] [--rate 0.2]
                                    [--max-tokens 16] [--fifo-time-limit 3600] [--no-demo]

E copies of SmolLM2-135M-Instruct under different names (each a separate expert: its own engine,
so loading one means evicting another when S < E), one trace (`benchmarks.sched_sim.make_trace`:
Poisson arrivals, MMLU-Pro dev prompts, expert by category) replayed through the live
`serving.schedule.Scheduler` under each policy, in one run: throughput, p50 / p95 latency, swaps.
Swap times (shutdown + start, measured per swap by `SlotManager`) and batch times by size are
written to `benchmarks/sched_costs.json`, which the simulator (`benchmarks.sched_sim`) reads.
Then (unless `--no-demo`) an LLM-synthesis answer by two of the experts, through the OpenAI HTTP
API (`serving.ingress.create_api`, in process) with the scheduler underneath.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import time
from typing import Any

from benchmarks.sched_sim import COSTS, Arrival, make_trace, percentile
from experts.registry import Registry, parse_registry
from experts.stream import ExpertRequest, collect
from serving.residency import SlotManager, VLLMEngineFactory
from serving.schedule import POLICIES, ScheduledExpertClient, Scheduler, SchedulerConfig

log = logging.getLogger(__name__)


def copies_registry(n: int, k: int = 1, aggregation: str = "synthesis") -> Registry:
    """`n` experts that are all SmolLM2-135M-Instruct under other names; the first aggregates."""
    experts = [{"name": f"smol-{chr(97 + i)}", "model": "builtin:smollm2-135m-instruct",
                "context_length": 1024, "can_aggregate": i == 0, "default_competence": 0.12,
                "timeout_s": 3600} for i in range(n)]  # fmt: skip
    return parse_registry({"experts": experts,
                           "router": {"experts_per_query": k, "aggregation": aggregation}})  # fmt: skip


async def replay(policy: str, trace: list[Arrival], registry: Registry, cfg: SchedulerConfig,
                 max_tokens: int, time_limit: float) -> dict[str, Any]:  # fmt: skip
    names = [e.name for e in registry.experts]
    slots = SlotManager(VLLMEngineFactory(list(registry.experts)), cfg.slots)
    sched = Scheduler(POLICIES[policy](cfg), slots, names)
    clients = {n: ScheduledExpertClient(n, sched) for n in names}
    start = time.monotonic()
    done: dict[int, float] = {}

    async def one(i: int, a: Arrival) -> None:
        request = ExpertRequest(f"{policy}-{i}", [{"role": "user", "content": a.prompt}],
                                max_tokens=max_tokens, temperature=0.0, seed=0)  # fmt: skip
        await collect(clients[a.expert].stream_chat(request))
        done[i] = time.monotonic() - start - a.t

    tasks = []
    for i, a in enumerate(trace):
        await asyncio.sleep(max(0.0, start + a.t - time.monotonic()))
        tasks.append(asyncio.create_task(one(i, a)))
    _, pending = await asyncio.wait(tasks, timeout=max(1.0, start + time_limit - time.monotonic()))
    end = time.monotonic() - start
    for t in pending:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception()]
    await sched.close()
    last = max((trace[i].t + lat for i, lat in done.items()), default=end)
    lat = list(done.values())
    return {"policy": policy, "answered": len(done), "n": len(trace), "failed": len(failed),
            "makespan_s": last - trace[0].t, "throughput": len(done) / (last - trace[0].t),
            "p50_s": percentile(lat, 50), "p95_s": percentile(lat, 95),
            "swaps": len(slots.swap_log), "swap_log": slots.swap_log,
            "batches": len(sched.stats.batches), "batch_times": sched.stats.batch_times,
            "timed_out": bool(pending), "loadavg": os.getloadavg()[0]}  # fmt: skip


async def synthesis_demo(max_tokens: int) -> dict[str, Any]:
    """Two experts answer, the aggregator chosen by the recruiter synthesises, over HTTP."""
    import httpx
    import numpy as np

    from router import RoutingDecision
    from router.recruit import Recruiter
    from serving.ingress import create_api
    from serving.pipeline import Pipeline
    from skills.store import InMemoryStateStore

    registry = copies_registry(2, k=2, aggregation="synthesis")
    names = [e.name for e in registry.experts]
    recruiter = Recruiter(registry, InMemoryStateStore())
    uniform = np.full(len(registry.skills), 1 / len(registry.skills))

    async def route(text: str, model: str) -> RoutingDecision:
        # The skill classifier is skipped (uniform skills): this demo is about aggregation.
        rec = recruiter.recruit(uniform, model)
        return RoutingDecision(model, rec.experts, [], None, rec.to_dict())

    cfg = SchedulerConfig(slots=2, max_batch_wait_s=0.01)
    sched = Scheduler(POLICIES["batch"](cfg), SlotManager(VLLMEngineFactory(list(registry.experts)), 2), names)
    service = Pipeline(registry, route, {n: ScheduledExpertClient(n, sched) for n in names})
    app = create_api(service)
    question = "What is 17 + 25? Answer with just the number."
    body = {"model": "auto", "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens, "temperature": 0.0}  # fmt: skip
    out: dict[str, Any] = {"question": question}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://quorum", timeout=3600) as client:  # fmt: skip
        t0 = time.monotonic()
        r = await client.post("/v1/chat/completions", json=body)
        out["status"] = r.status_code
        data = r.json()
        out["non_stream_s"] = round(time.monotonic() - t0, 1)
        out["answer"] = data["choices"][0]["message"]["content"] if r.status_code == 200 else data
        out["aggregation"] = data.get("quorum", {}).get("aggregation")
        t0, chunks, text = time.monotonic(), 0, ""
        async with client.stream("POST", "/v1/chat/completions", json=body | {"stream": True}) as s:
            async for line in s.aiter_lines():
                if line.startswith("data: {"):
                    delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
                    if delta:
                        chunks += 1
                        text += delta
        out["stream_chunks"], out["stream_text"] = chunks, text
        out["stream_s"] = round(time.monotonic() - t0, 1)
    await sched.close()
    return out


def _command(args: dict[str, Any]) -> str:
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in args.items()
                     if k in ("experts", "slots", "requests", "rate", "max_tokens", "swap_cost_s",
                              "policies", "merge") and v is not None)  # fmt: skip
    return f"python -m benchmarks.scheduling {flags}"


def _table(rows: list[dict]) -> str:
    lines = ["| policy | answered | throughput (req/min) | vs FIFO | p50 latency (s) | "
             "p95 latency (s) | swaps | batches | makespan (s) |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    fifo = next((r for r in rows if r["policy"] == "fifo"), None)
    for r in rows:
        vs = f"{r['throughput'] / fifo['throughput']:.1f}x" if fifo and fifo["throughput"] else "-"
        lines.append(f"| {r['policy']}{' (time limit hit)' if r['timed_out'] else ''} | "
                     f"{r['answered']}/{r['n']} | {60 * r['throughput']:.2f} | {vs} | "
                     f"{r['p50_s']:.0f} | {r['p95_s']:.0f} | {r['swaps']} | {r['batches']} | "
                     f"{r['makespan_s']:.0f} |")  # fmt: skip
    return "\n".join(lines)


def write_costs(rows: list[dict], path=COSTS) -> dict:
    """Swap cost (mean evict + load) and mean batch time by size, from every run, for the sim."""
    swaps = [s for r in rows for s in r["swap_log"]]
    evict = [s["evict_s"] for s in swaps if s["evict"]]
    load = [s["load_s"] for s in swaps]
    by_size: dict[int, list[float]] = {}
    for r in rows:
        for size, seconds in r["batch_times"]:
            by_size.setdefault(size, []).append(seconds)
    costs = {"swap_s": statistics.mean(load) + (statistics.mean(evict) if evict else 0.0),
             "load_s": load, "evict_s": evict,
             "batch_s": {str(b): statistics.mean(v) for b, v in sorted(by_size.items())},
             "batch_n": {str(b): len(v) for b, v in sorted(by_size.items())},
             "source": "benchmarks/scheduling.py (live, vLLM CPU, SmolLM2-135M copies)"}  # fmt: skip
    path.write_text(json.dumps(costs, indent=1) + "\n")
    return costs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--slots", type=int, default=1)
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--rate", type=float, default=0.2, help="arrivals per second")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--swap-cost-s", type=float, default=60.0, help="the policy's swap estimate")
    p.add_argument("--fifo-time-limit", type=float, default=3600.0)
    p.add_argument("--no-demo", action="store_true")
    p.add_argument("--policies", default="batch,fifo", help="comma-separated, run in this order")
    p.add_argument("--merge", default=None,
                   help="a previous run's JSON (same trace arguments): keep its rows and demo, "
                   "run only --policies (to finish a run that was stopped between policies)")
    p.add_argument("--out", default="benchmarks/out/scheduling.json")
    p.add_argument("--report-from", default=None,
                   help="rewrite the RESULTS.md section from a finished run's JSON (--out) and "
                   "benchmarks/sched_costs.json, without running anything")
    args = p.parse_args(argv)
    if args.report_from:
        with open(args.report_from) as fh:
            done = json.load(fh)
        cmd = "python -m benchmarks.scheduling " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in done["args"].items()
            if v not in (None, False) and k not in ("report_from", "policies", "seed", "swap_cost_s"))
        report(done, json.loads(COSTS.read_text()), cmd.replace(" True", ""))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from experts.engine import platform_supports_sleep

    registry = copies_registry(args.experts)
    trace = make_trace(args.requests, args.rate, [e.name for e in registry.experts], args.seed)
    trace = [a for a in trace]
    cfg = SchedulerConfig(slots=args.slots, max_batch_size=32, max_batch_wait_s=0.05,
                          max_wait_s=30 * args.swap_cost_s, swap_cost_s=args.swap_cost_s)  # fmt: skip
    result: dict[str, Any] = {"args": vars(args), "sleep_supported": platform_supports_sleep()}
    rows = []
    if args.merge:
        with open(args.merge) as fh:
            previous = json.load(fh)
        keep = ("experts", "slots", "requests", "rate", "max_tokens", "seed")
        if any(previous["args"][k] != getattr(args, k) for k in keep):
            raise SystemExit(f"--merge {args.merge}: it ran another trace ({previous['args']})")
        rows = [r for r in previous["rows"] if r["policy"] not in args.policies.split(",")]
        result |= {k: previous[k] for k in ("demo",) if k in previous}
        result["merged_from"] = previous["args"]
        result["commands"] = previous.get("commands") or [_command(previous["args"])]
    limits = {"batch": 3600.0, "fifo": args.fifo_time_limit}
    for policy in args.policies.split(","):
        limit = limits[policy]
        rows.append(asyncio.run(replay(policy, trace, registry, cfg, args.max_tokens, limit)))
        log.info("%s: %s", policy, {k: v for k, v in rows[-1].items() if "log" not in k and "times" not in k})
        result["rows"] = rows
        costs = write_costs(rows)
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)
        if policy == "batch" and not args.no_demo:
            result["demo"] = asyncio.run(synthesis_demo(args.max_tokens))
            log.info("demo: %s", result["demo"])
    rows.sort(key=lambda r: list(POLICIES).index(r["policy"]))
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    command = "python -m benchmarks.scheduling " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.merge:  # rows kept from earlier commands on the same trace
        command = "`, then `".join([*result["commands"], command])
    report(result, costs, command)


def report(result: dict[str, Any], costs: dict, command: str) -> None:
    """Print the run's table and write it to benchmarks/RESULTS.md."""
    from experts.engine import cpu_has_native_bf16

    args = argparse.Namespace(**result["args"])
    rows = result["rows"]
    swaps = [s for r in rows for s in r["swap_log"]]
    body = (
        f"{args.experts} experts (copies of SmolLM2-135M-Instruct under other names, each its own "
        f"vLLM CPU engine, float32{'' if cpu_has_native_bf16() else ', this CPU has no native bf16'}), "
        f"{args.slots} slot(s); one trace of {args.requests} requests "
        f"(Poisson, {args.rate:g}/s, MMLU-Pro dev prompts, expert by category), max_tokens "
        f"{args.max_tokens}, greedy; "
        + ("both policies in the same run" if not args.merge else "the rows come from the "
           "commands listed above, run one after another on the same trace (see the load note)")
        + f".\n\n{_table(rows)}\n\n"
        f"Swap cost on vLLM CPU (sleep mode supported: {result['sleep_supported']}; every swap is "
        f"shutdown + start): load (engine start) mean {statistics.mean(s['load_s'] for s in swaps):.0f} s "
        f"(min {min(s['load_s'] for s in swaps):.0f}, max {max(s['load_s'] for s in swaps):.0f}, "
        f"n={len(swaps)}), evict (shutdown) mean {costs['swap_s'] - statistics.mean(costs['load_s']):.1f} s. "
        "Batch time by size (mean s): "
        + ", ".join(f"{b}: {v:.1f}" for b, v in costs["batch_s"].items())
        + ". 1-minute load average of the 2 shared cores at the end of each policy's run: "
        + ", ".join(f"{r['policy']} {r['loadavg']:.1f}" for r in rows if "loadavg" in r)
        + " (other jobs inflate every time; the ratio is the result)."
    )
    if "demo" in result:
        d = result["demo"]
        body += (f"\n\nLLM synthesis through the HTTP API (2 experts + the recruiter's aggregator "
                 f"`{(d.get('aggregation') or {}).get('aggregator')}`): question {d['question']!r}; "
                 f"answers {[a['text'] for a in (d.get('aggregation') or {}).get('answers', [])]}; "
                 f"synthesis {d['answer']!r} ({d['non_stream_s']} s); streamed as "
                 f"{d['stream_chunks']} content chunks.")  # fmt: skip
    print(body)
    from benchmarks._results import machine_description, write_section

    write_section("scheduling", "Scheduling, live (batch-by-expert vs FIFO, vLLM CPU)", command,
                  machine_description(), body)  # fmt: skip


if __name__ == "__main__":
    main()
