"""Where the decode time goes: per-kernel GPU time of the Triton layer replayed from a graph.

    python -m benchmarks.kernels.experiments.profile_decode [shape] [T ...] [--skewed] [--trace DIR]

With `--trace DIR` each case's profile is also written as a Chrome trace (DIR/<shape>_T<t>.json):
the kernels' start times, so the gaps between the graph's launches can be read off.
"""

from __future__ import annotations

import sys
from functools import partial

import torch

from benchmarks.kernels._moe_common import SHAPES, make_params, skew_offsets, triton_layer
from benchmarks.kernels._timing import graph


def main() -> None:
    argv = sys.argv[1:]
    trace = None
    if "--trace" in argv:
        i = argv.index("--trace")
        trace, argv = argv[i + 1], argv[:i] + argv[i + 2:]
    args = [a for a in argv if a != "--skewed"]
    name = args[0] if args else "qwen3-30b-a3b"
    tokens = [int(v) for v in args[1:]] or [1, 8]
    shape = SHAPES[name]
    dev = torch.device("cuda")
    p = make_params(shape, False, dev)
    if "--skewed" in sys.argv:
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
        print(f"== {name} T={t} {'skewed' if p.skew is not None else 'uniform'}: per-kernel GPU time (us, mean of {reps} replays)")
        for evt in prof.key_averages():
            if evt.device_type == torch.autograd.DeviceType.CUDA and "zero" not in evt.key \
                    and "fill" not in evt.key.lower():
                us = evt.device_time_total / reps
                print(f"{us:8.1f}  {evt.count // reps:2d}x  {evt.key[:90]}")


if __name__ == "__main__":
    main()
