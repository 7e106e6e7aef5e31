"""Experiment: fused route+align launch time against its warp count (decode shapes)."""

from __future__ import annotations

from functools import partial

import torch
import triton.testing

from benchmarks.kernels._moe_common import SHAPES
from experts.moe.kernels.route_align import route_align


def main() -> None:
    dev = torch.device("cuda")
    for name in ("qwen3-30b-a3b", "mixtral-8x7b", "deepseek-v3"):
        s = SHAPES[name]
        bias = torch.zeros(s.e, device=dev) if s.with_bias else None
        for t in (1, 8):
            if t * s.top_k > 128:
                continue
            logits = torch.randn(t, s.e, device=dev)
            row = []
            for w in (1, 2, 4):
                fn = partial(route_align, logits, s.routing, s.local_e, 16, bias, s.local,
                             num_warps=w)
                fn()  # compile outside the capture
                torch.cuda.synchronize()
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    for _ in range(50):  # back-to-back launches: the host is out of the timing
                        fn()
                ms = triton.testing.do_bench(g.replay, warmup=20, rep=100, return_mode="median")
                row.append(f"{w}w {ms * 1e3 / 50:.1f}us")
            print(name, t, " ".join(row), flush=True)


if __name__ == "__main__":
    main()
