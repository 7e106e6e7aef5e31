"""Experiment: programmatic dependent launch (PDL) on the aligned path, timed against without.

`python -m benchmarks.kernels.experiments.exp_pdl [--tokens 8 64] [shape ...]`: per shape, T and
routing, the whole layer (router GEMM, route_align or route + align, gate/up, down, combine)
replayed from a CUDA graph, with the checked-in config and with the same config plus
`"PDL": true` (`grouped_gemm._launch`: each grouped GEMM and the combine may start while the
kernel before it finishes, and waits for its writes with `gdc_wait`). Rounds alternate the two
so that drift hits both; each cell is the best of the rounds' do_bench medians. Output is
checked bit for bit against the config without PDL. T=1 rows take the one-launch decode kernel
(no PDL), so the default tokens are 8 and 64. Needs a Hopper or newer GPU.
"""

from __future__ import annotations

import argparse
from functools import partial

import torch

from benchmarks.kernels._moe_common import SHAPES, make_params, triton_layer, work
from benchmarks.kernels._timing import copy_time, graph_time
from experts.moe.kernels.configs import get_config


def _row(name: str, t: int, skewed: bool, rounds: int) -> str:
    shape = SHAPES[name]
    dev = torch.device("cuda")
    p = make_params(shape, skewed, dev)
    x = torch.randn(t, shape.h, dtype=torch.bfloat16, device=dev,
                    generator=torch.Generator(device=dev).manual_seed(t))
    base = {k: v for k, v in get_config(t, shape.local_e, shape.h, shape.inter, shape.top_k,
                                         dev).items() if k not in ("decode", "PDL")}  # fmt: skip
    cfgs = {"off": base, "pdl": base | {"PDL": True}}
    with torch.no_grad():
        ref = triton_layer(x, shape, p, cfgs["off"])
        same = torch.equal(triton_layer(x, shape, p, cfgs["pdl"]), ref)
        best = {k: float("inf") for k in cfgs}
        for i in range(rounds):
            for k in (list(cfgs) if i % 2 == 0 else list(cfgs)[::-1]):
                best[k] = min(best[k], graph_time(partial(triton_layer, x, shape, p, cfgs[k]), 60))
        _, nbytes, _ = work(x, shape, p)
        copy = copy_time(nbytes, dev, 60) if t <= 8 else None
    off, on = best["off"] * 1e6, best["pdl"] * 1e6
    pct = (lambda us: f"{100 * copy * 1e6 / us:.0f}%") if copy else (lambda us: "-")
    return (f"| {name} | {t} | {'skewed' if skewed else 'uniform'} | {off:.1f} | {on:.1f} | "
            f"{off - on:+.1f} | {on / off:.3f} | {pct(off)} | {pct(on)} | "
            f"{'same' if same else 'DIFFERENT'} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("shapes", nargs="*", choices=[[], *SHAPES], help="default: all")
    ap.add_argument("--tokens", nargs="+", type=int, default=[8, 64])
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args(argv)
    args.shapes = args.shapes or list(SHAPES)
    print(f"GPU: {torch.cuda.get_device_name()}; graph replay, cold L2, best of {args.rounds} "
          "alternating rounds of do_bench medians; % copy = same-bytes copy / time (T <= 8)\n")
    print("| shape | T | routing | no PDL us | PDL us | saved us | ratio | % copy | % copy PDL | "
          "output |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for name in args.shapes:
        for t in args.tokens:
            for skewed in (False, True):
                print(_row(name, t, skewed, args.rounds), flush=True)


if __name__ == "__main__":
    main()
