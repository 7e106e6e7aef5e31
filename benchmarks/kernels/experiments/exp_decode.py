"""Where the decode kernel's time goes: routing prologue vs streaming, per tile size.

python -m benchmarks.kernels.experiments.exp_decode [shape] [T ...]
"""

from __future__ import annotations

import sys
from functools import partial

import torch
import triton.testing

from benchmarks.kernels._moe_common import SHAPES, logits_of, make_params, to_local, work
from benchmarks.kernels._timing import graph
from experts.moe.kernels.decode import moe_decode
from experts.moe.kernels.routing import route


def _t(fn) -> float:
    g = graph(fn)
    return triton.testing.do_bench(g.replay, warmup=10, rep=60, return_mode="median") * 1e3


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "qwen3-30b-a3b"
    tokens = [int(v) for v in sys.argv[2:]] or [1, 8]
    shape = SHAPES[name]
    dev = torch.device("cuda")
    p = make_params(shape, False, dev)
    for t in tokens:
        x = torch.randn(t, shape.h, dtype=torch.bfloat16, device=dev)
        logits = logits_of(x, shape, p)
        ids, w = route(logits, shape.routing, p.bias)
        ids = to_local(ids, shape)
        _, nbytes, _ = work(x, shape, p)
        print(f"== {name} T={t}: floor {nbytes / 3.0e12 * 1e6:.1f} us at 3.0 TB/s")
        print(f"router linear alone {_t(partial(torch.nn.functional.linear, x, p.router)):.1f} us")
        print(
            f"zeros alone {_t(partial(torch.zeros, t * shape.h + 1, dtype=torch.int32, device=dev)):.1f} us"
        )
        for bi in (16, 32, 64):
            for warps, stages in ((4, 3), (4, 4), (8, 3)):
                cfg = dict(BLOCK_I=bi, BLOCK_K=128, BLOCK_H=128, num_warps=warps, num_stages=stages)
                a = _t(
                    partial(
                        moe_decode,
                        x,
                        p.w13,
                        p.w2,
                        logits=logits,
                        routing=shape.routing,
                        bias=p.bias,
                        local_experts=shape.local,
                        config=cfg,
                    )
                )
                b = _t(
                    partial(moe_decode, x, p.w13, p.w2, topk_ids=ids, topk_weights=w, config=cfg)
                )
                print(
                    f"BI={bi} w={warps} s={stages}: routed in kernel {a:.1f} us, ids given "
                    f"{b:.1f} us"
                )
    from experts.moe.kernels.decode import _decode_kernel

    for _key, k in list(_decode_kernel.device_caches[0][0].items())[:1]:
        ptx = k.asm["ptx"]
        print("ptx: atom.", ptx.count("atom."), "red.", ptx.count("red."))


if __name__ == "__main__":
    main()
