"""Step-by-step check of the layer's kernels at growing T (synchronising after each launch)."""

from __future__ import annotations

import sys

import torch

from benchmarks.kernels._moe_common import SHAPES, logits_of, make_params
from experts.kernels.align import align
from experts.kernels.configs import get_config
from experts.kernels.grouped_gemm import combine, down, gate_up
from experts.kernels.reference import align_reference
from experts.kernels.routing import route


def main() -> None:
    shape = SHAPES[sys.argv[1] if len(sys.argv) > 1 else "mixtral-8x7b"]
    dev = torch.device("cuda")
    p = make_params(shape, False, dev)
    for t in [int(v) for v in sys.argv[2:]] or (512, 1024, 2048, 4096):
        x = torch.randn(t, shape.h, dtype=torch.bfloat16, device=dev)
        cfg = get_config(t, shape.e, shape.h, shape.inter, shape.top_k, dev)
        ids, w = route(logits_of(x, shape, p), shape.routing, p.bias)
        torch.cuda.synchronize()
        print(t, "route ok", cfg["BLOCK_M"], flush=True)
        a = align(ids, shape.e, cfg["BLOCK_M"])
        torch.cuda.synchronize()
        b = align_reference(ids.cpu(), shape.e, cfg["BLOCK_M"])
        print(t, "align", [torch.equal(u.cpu(), v) for u, v in zip(a, b, strict=True)], flush=True)
        h = gate_up(x, p.w13, a[0], a[1], a[2], shape.top_k, cfg["gate_up"] | cfg)
        torch.cuda.synchronize()
        print(t, "gate_up ok", flush=True)
        y = down(h, p.w2, w.reshape(-1), a[0], a[1], a[2], cfg["down"] | cfg)
        torch.cuda.synchronize()
        combine(y, a[3], t, shape.top_k)
        torch.cuda.synchronize()
        print(t, "down+combine ok", flush=True)


if __name__ == "__main__":
    main()
