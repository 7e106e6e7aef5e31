"""How close can any kernel get to the copy-bandwidth floor at decode sizes?

    python -m benchmarks.kernels.experiments.exp_small_copy

Times, the way bench_moe times a layer (graph replay, L2 flushed, do_bench median), a
device-to-device copy and a read-only reduction of the byte counts of the decode floors, and
the same inside one graph of L back-to-back copies of different buffers.
"""

from __future__ import annotations

from functools import partial

import torch
import triton.testing

from benchmarks.kernels._moe_common import measure_ceilings
from benchmarks.kernels._timing import graph


def _t(fn) -> float:
    g = graph(fn)
    return triton.testing.do_bench(g.replay, warmup=10, rep=80, return_mode="median") * 1e-3


def _copies(bufs) -> None:
    for s, d in bufs:
        d.copy_(s)


def main() -> None:
    dev = torch.device("cuda")
    bw, _ = measure_ceilings(dev)
    print(f"copy bandwidth (1 GiB buffers): {bw / 1e12:.2f} TB/s")
    print(
        f"empty-ish graph (one 4-byte memset): {_t(lambda: torch.zeros(1, device=dev)) * 1e6:.1f} us"
    )
    for label, nbytes in (
        ("qwen3 T=1", 75.5e6),
        ("qwen3 T=8 skewed", 160e6),
        ("mixtral-tp2 T=1", 352e6),
        ("qwen3 T=8 uniform", 491e6),
        ("mixtral T=1", 705e6),
    ):
        n = int(nbytes) // 4  # bf16 elements per side: read n*2 bytes, write n*2 bytes
        src = torch.randn(n, device=dev).to(torch.bfloat16)
        dst = torch.empty_like(src)
        floor = nbytes / bw
        t_copy = _t(partial(dst.copy_, src))
        rd = torch.randn(int(nbytes) // 2, device=dev).to(torch.bfloat16)
        out = torch.empty((), device=dev)
        t_read = _t(partial(torch.sum, rd, 0, dtype=torch.float32, out=out))
        layers = 8
        bufs = (
            [(torch.empty_like(src), torch.empty_like(src)) for _ in range(layers)]
            if nbytes < 200e6
            else []
        )
        t_l = (_t(partial(_copies, bufs)) / layers) if bufs else float("nan")
        print(
            f"{label}: {nbytes / 1e6:.0f} MB, floor {floor * 1e6:.1f} us | copy {t_copy * 1e6:.1f} us "
            f"({100 * floor / t_copy:.0f}% of floor) | read-only sum {t_read * 1e6:.1f} us "
            f"({100 * floor / t_read:.0f}%) | copy in an {layers}-copy graph {t_l * 1e6:.1f} us/copy "
            f"({100 * floor / t_l:.0f}%)"
        )
        src = dst = rd = bufs = None
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
