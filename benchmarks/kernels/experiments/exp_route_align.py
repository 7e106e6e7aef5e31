"""Experiment: fused route+align launch time by warp count and layout (decode shapes).

`python -m benchmarks.kernels.experiments.exp_route_align [shape ...]`: per shape and T, the
launch time (CUDA graph of 50 back-to-back launches, median) with the layout derived from
per-expert counts ("expert", [slots, experts] tiles) and from the slots alone ("slot",
[slots, slots] tiles), at 2, 4, 8 and 16 warps (the layer takes a config's "ROUTE_WARPS").

`--static` needs no GPU: it compiles the same variants for sm_90 and prints the PTX instruction
count, the number of `bar.sync` (each a block-wide wait in this single-program kernel), the
registers and spilled bytes `ptxas -v` reports (the ptxas the installed Triton uses for sm_90,
through `exp_static.assemble`), and how many reductions take a tensor in a linear layout (what
went wrong on the H200 in Session 9). To
compile with the device image's Triton: `pip install --target /tmp/t36 triton==3.6.0`, then
`PYTHONPATH=/tmp/t36:. python -m benchmarks.kernels.experiments.exp_route_align --static`.
"""

from __future__ import annotations

import re
import sys
from functools import partial

import torch
import triton
import triton.testing

from benchmarks.kernels._moe_common import SHAPES, MoEShape
from experts.moe.kernels import route_align as ra
from experts.moe.kernels.reference import RoutingConfig

#: the two test cases (tests/kernels/test_route_align.py) the layout by slot got wrong on the H200,
#: as (shape, T); h and inter do not matter to route_align
CASES = {"decode_batch": (MoEShape(16, 4, 64, 64, RoutingConfig(top_k=4, renormalize=True)), 8),
         "prime_e": (MoEShape(13, 3, 64, 64, RoutingConfig(top_k=3)), 5)}  # fmt: skip
DEFAULT = ("qwen3-30b-a3b", "olmoe-1b-7b", "mixtral-8x7b", "deepseek-v3", "deepseek-v3-32exp")
VARIANTS = [(slots, w) for slots in (False, True) for w in (2, 4, 8, 16)]


def _launch_us(fn) -> float:
    fn()  # compile outside the capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(50):  # back-to-back launches: the host is out of the timing
            fn()
    return triton.testing.do_bench(g.replay, warmup=20, rep=100, return_mode="median") * 1e3 / 50


def _static(s, t: int, slots: bool, warps: int) -> str:
    from benchmarks.kernels.experiments.exp_static import assemble, compile_launch

    logits = torch.zeros(t, s.e)
    bias = torch.zeros(s.e) if s.with_bias else None
    _, args, consts = ra.launch_arguments(logits, s.routing, s.local_e, 16, bias, s.local, slots,
                                          False)
    asm = compile_launch(ra._route_align_kernel, args, consts | {"num_warps": warps},
                         hints=False).asm  # fmt: skip
    ptx = asm["ptx"]
    lines = [ln.strip() for ln in ptx.splitlines()]
    n = sum(1 for ln in lines if ln and not ln.startswith(("//", ".", "$", "{", "}")))
    # reductions over a linear layout (a reshape's, lanes replicated): the layout by slot summed
    # one wrong on the H200 with Triton 3.6 (NOTES.md, Session 10)
    linear = len(re.findall(r"^\s*\}\) : \(tensor<[^>]*#linear", asm["ttgir"], re.M))
    return (f"{n} ptx / {ptx.count('bar.sync')} bar.sync / {assemble(ptx)[0]} / "
            f"{linear} linear reductions")


def main(argv: list[str]) -> None:
    static = "--static" in argv
    names = [a for a in argv if not a.startswith("--")] or DEFAULT
    dev = torch.device("cuda") if not static else None
    if static:  # the counts depend on the Triton version (3.9 spilled where 3.6 did not)
        print(f"Triton {triton.__version__}, sm_90, without the launcher's specialisation")
    for name in names:
        s, ts = (CASES[name][0], (CASES[name][1],)) if name in CASES else (SHAPES[name], (1, 8, 16))
        bias = torch.zeros(s.e, device=dev) if s.with_bias and dev else None
        for t in ts:
            if t * s.top_k > ra.MAX_FUSED_SLOTS:
                continue
            row = []
            for slots, w in VARIANTS:
                label = f"{'slot' if slots else 'expert'}/{w}w"
                if static:
                    row.append(f"{label} {_static(s, t, slots, w)}")
                    continue
                logits = torch.randn(t, s.e, device=dev,
                                     generator=torch.Generator(dev).manual_seed(t))
                fn = partial(ra.route_align, logits, s.routing, s.local_e, 16, bias, s.local,
                             num_warps=w, slot_layout=slots)
                row.append(f"{label} {_launch_us(fn):.1f}us")
            print(name, t, " | ".join(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
