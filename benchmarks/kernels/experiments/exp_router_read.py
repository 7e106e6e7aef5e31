"""What a layer whose router is its own kernel can reach at decode: the router GEMM then a plain read.

    python -m benchmarks.kernels.experiments.exp_router_read [shape:T ...]

bench_moe's layer starts with the router GEMM (as a served model runs it, before the MoE method),
then reads the touched experts' weights. Per case, all timed as bench_moe times a layer (graph
replay, L2 flushed, median), on the same draw of x:

- `copy`: the bench's same-bytes copy reference (`_timing.copy_time`);
- `read`: the fastest read-only stream of the same bytes (`_timing.read_times`);
- `router`: the router GEMM alone;
- `router+read`: the router GEMM, then that fastest read, in one graph: a lower bound for any layer
  that keeps the router as a separate kernel and must stream the touched weights after it;
- `ours`: the Triton layer with the checked-in config.

Prints each as time and as `% copy` (copy time / time), the decode target's measure.
"""

from __future__ import annotations

import sys
from functools import partial

import torch

from benchmarks.kernels._moe_common import (
    SHAPES,
    in_order,
    logits_of,
    make_params,
    triton_layer,
    work,
)
from benchmarks.kernels._streams import read_buffer, read_designs
from benchmarks.kernels._timing import copy_time, graph_time

CASES = ["qwen3-30b-a3b:1", "olmoe-1b-7b:1", "mixtral-8x7b-tp2:1", "qwen3-30b-a3b:8", "olmoe-1b-7b:8"]



def case(spec: str, dev: torch.device) -> None:
    name, t = spec.split(":")
    shape = SHAPES[name]
    p = make_params(shape, False, dev)
    x = torch.randn(int(t), shape.h, dtype=torch.bfloat16, device=dev,
                    generator=torch.Generator(dev).manual_seed(0))
    _, nbytes, stats = work(x, shape, p)
    with torch.no_grad():
        copy = copy_time(nbytes, dev, 60)
        reads = read_designs(read_buffer(nbytes, dev))
        times = {k: graph_time(fn, 60) for k, fn in reads.items()}
        best = min(times, key=times.get)
        router = partial(logits_of, x, shape, p)
        t_router = graph_time(router, 60)
        t_both = graph_time(partial(in_order, router, reads[best]), 60)
        t_ours = graph_time(partial(triton_layer, x, shape, p), 60)
    cols = dict(copy=copy, read=times[best], router=t_router, **{"router+read": t_both}, ours=t_ours)
    print(f"== {spec} {stats} {nbytes / 1e6:.1f} MB (read: {best})", flush=True)
    print("   " + "; ".join(f"{k} {v * 1e6:.1f} us ({100 * copy / v:.0f}% copy)"
                            for k, v in cols.items()), flush=True)


def main() -> None:
    dev = torch.device("cuda")
    for spec in sys.argv[1:] or CASES:
        case(spec, dev)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
