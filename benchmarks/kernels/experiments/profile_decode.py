"""Where the decode time goes: per-kernel GPU time of the Triton layer replayed from a graph.

    python -m benchmarks.kernels.experiments.profile_decode [shape] [T ...] [--skewed] [--trace DIR]

With `--trace DIR` each case's profile is also written as a Chrome trace (DIR/<shape>_T<t>.json):
the kernels' start times, so the gaps between the graph's launches can be read off; and each
kernel's median start and end within a replay are printed (us after the replay's first kernel
starts; with PDL a kernel starts before the one it waits for ends, so its end is what counts).
"""

from __future__ import annotations

import argparse
import json
import statistics
from functools import partial
from pathlib import Path

import torch

from benchmarks.kernels._moe_common import SHAPES, make_params, skew_offsets, triton_layer
from benchmarks.kernels._timing import graph


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("shape", nargs="?", default="qwen3-30b-a3b", choices=list(SHAPES))
    ap.add_argument("tokens", nargs="*", type=int, default=[1, 8])
    ap.add_argument("--skewed", action="store_true")
    ap.add_argument("--trace", metavar="DIR", help="also write each case's Chrome trace here")
    args = ap.parse_args()
    name, tokens, trace = args.shape, args.tokens, args.trace
    shape = SHAPES[name]
    dev = torch.device("cuda")
    p = make_params(shape, False, dev)
    if args.skewed:
        p.skew = skew_offsets(p.router)
    flush = torch.empty(256 << 20, dtype=torch.int8, device=dev)
    for t in tokens:
        x = torch.randn(t, shape.h, dtype=torch.bfloat16, device=dev)
        with torch.no_grad():
            g = graph(partial(triton_layer, x, shape, p))
        reps = 20
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                flush.zero_()  # cold L2, as in the benchmark
                g.replay()
            torch.cuda.synchronize()
        if trace:
            prof.export_chrome_trace(f"{trace}/{name}_T{t}.json")
            timeline(f"{trace}/{name}_T{t}.json")
        print(f"== {name} T={t} {'skewed' if p.skew is not None else 'uniform'}: per-kernel GPU time (us, mean of {reps} replays)")
        for evt in prof.key_averages():
            if evt.device_type == torch.autograd.DeviceType.CUDA and "zero" not in evt.key \
                    and "fill" not in evt.key.lower():
                us = evt.device_time_total / reps
                print(f"{us:8.1f}  {evt.count // reps:2d}x  {evt.key[:90]}")


def timeline(path: str) -> None:
    """Each layer kernel's median (start, end) within a replay, from a Chrome trace."""
    trace = json.loads(Path(path).read_text())["traceEvents"]
    events = sorted((e for e in trace if e.get("cat") == "kernel"), key=lambda e: e["ts"])
    replays, cur = [], None
    for e in events:
        if "zero" in e["name"] or "fill" in e["name"].lower():  # the L2 flush before each replay
            cur = []
            replays.append(cur)
        elif cur is not None:
            cur.append(e)
    replays = [r for r in replays if r and len(r) == len(replays[0])]
    print(f"   timeline over {len(replays)} replays: kernel, start, end (us)")
    for i, first in enumerate(replays[0] if replays else []):
        t0 = [r[0]["ts"] for r in replays]
        start = statistics.median(r[i]["ts"] - a for r, a in zip(replays, t0, strict=True))
        end = statistics.median(r[i]["ts"] + r[i]["dur"] - a for r, a in zip(replays, t0, strict=True))
        print(f"   {first['name'][:60]:60s} {start:7.1f} {end:7.1f}")


if __name__ == "__main__":
    main()
