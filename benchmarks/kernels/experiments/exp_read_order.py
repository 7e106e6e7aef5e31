"""Does the order in which programs sweep memory explain Triton's slower reads? (H200 lead.)

    python -m benchmarks.kernels.experiments.exp_read_order [MB ...]

The CUDA reader of `_streams.py` sweeps memory grid-stride: at every step all threads of the grid
read one contiguous window. The Triton streams of `_streams.py` give each program its own
contiguous run, so the grid reads hundreds of distant places at once. This times, per size, the
CUDA reader, the Triton per-program-run stream, and a Triton grid-stride stream (program p reads
tiles p, p + G, p + 2G, ..., U tiles per step), all as bench_moe times a layer.
"""

from __future__ import annotations

import sys
from functools import partial

import torch
import triton
import triton.language as tl

from benchmarks.kernels._streams import read_buffer, read_designs
from benchmarks.kernels._timing import graph_time


@triton.jit
def _strided_read_kernel(src, out, n_tiles, U: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    g = tl.num_programs(0)
    offs = tl.arange(0, U)[:, None] * g * BLOCK + tl.arange(0, BLOCK)[None, :]
    acc = tl.zeros([U, BLOCK], tl.float32)
    ptr = src + pid.to(tl.int64) * BLOCK
    for _ in range(pid, n_tiles - (U - 1) * g, U * g):  # U tiles g apart per step
        acc += tl.load(ptr + offs).to(tl.float32)
        ptr += U * g * BLOCK
    tl.store(out + pid, tl.sum(acc))


def main() -> None:
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    for mb in [float(a) for a in sys.argv[1:]] or [76, 352]:
        src = read_buffer(mb * 1e6, dev)
        full = src.numel() * 2
        fns = {k: (v, full) for k, v in read_designs(src).items() if "528" in k or "cuda" in k}
        for per_sm, warps, u, block in (
            (4, 8, 1, 4096),
            (4, 8, 2, 4096),
            (8, 8, 1, 4096),
            (4, 16, 2, 8192),
            (2, 16, 4, 4096),
        ):
            g = per_sm * sms
            n_tiles = src.numel() // block
            out = torch.empty(g, dtype=torch.float32, device=dev)
            read = (
                sum(len(range(p, n_tiles - (u - 1) * g, u * g)) for p in range(g)) * u * block * 2
            )
            fns[f"triton grid-stride {per_sm}/SM x {warps} warps, {u} x {block}"] = (
                partial(
                    _strided_read_kernel[(g,)], src, out, n_tiles, U=u, BLOCK=block, num_warps=warps
                ),
                read,
            )
        times = {k: (graph_time(fn, 60), nbytes) for k, (fn, nbytes) in fns.items()}
        print(f"== {mb:.0f} MB", flush=True)
        for k, (v, nbytes) in sorted(times.items(), key=lambda kv: kv[1][0] / kv[1][1]):
            print(
                f"   {v * 1e6:8.1f} us for {nbytes / 1e6:6.1f} MB: {nbytes / v / 1e12:.2f} TB/s  {k}",
                flush=True,
            )


if __name__ == "__main__":
    main()
