"""Experiment: layer-level config flags on the aligned path, each timed against the entry without.

`python -m benchmarks.kernels.experiments.exp_variants [--tokens 8 64] [--flags PDL ...] [shape ...]`:
per shape, T and routing, the whole layer (router GEMM, route_align or route + align, gate/up,
down, combine) replayed from a CUDA graph, with the checked-in config stripped of the flags
(`off`), and then with each flag and each combination of them turned on:

- `PDL`: programmatic dependent launches (`grouped_gemm._launch`);
- `SLOT_LAYOUT`: route_align's layout from the slots alone (`route_align(slot_layout=True)`);
- `ROUTE_WARPS`: route_align's warp count (8 or 16 against the default 4).

Rounds alternate the variants' order so that drift hits all; each cell is the best of the
rounds' do_bench medians. A variant's output must be the same bits as the same variant without
PDL and SLOT_LAYOUT (`tune_flags.exact_twin`), and every output within the bf16 tolerance of `off`.
T=1 rows take the one-launch decode kernel, so the default tokens are 8 and 64. Needs a Hopper
or newer GPU (PDL). Session 9 ran this with `--flags PDL` (then `exp_pdl.py`).
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.kernels import tune_flags
from benchmarks.kernels._moe_common import SHAPES, make_params, work
from benchmarks.kernels._timing import copy_time
from experts.moe.kernels.configs import get_config
from experts.moe.kernels.reference import TOLERANCE, rel_err

FLAGS = tune_flags.FLAGS


def _variants(flags: list[str]) -> dict[str, dict]:
    named = tune_flags.flag_variants(flags)
    return {"off": named.pop("entry"), **named}


def _row(name: str, t: int, skewed: bool, flags: list[str], rounds: int) -> str:
    shape = SHAPES[name]
    dev = torch.device("cuda")
    p = make_params(shape, skewed, dev)
    x = torch.randn(t, shape.h, dtype=torch.bfloat16, device=dev,
                    generator=torch.Generator(device=dev).manual_seed(t))
    base = {k: v for k, v in get_config(t, shape.local_e, shape.h, shape.inter, shape.top_k,
                                         dev).items() if k != "decode" and k not in FLAGS}  # fmt: skip
    variants = _variants(flags)
    cfgs = {k: base | v for k, v in variants.items()}
    with torch.no_grad():
        outs, best = tune_flags.run_variants(x, shape, p, cfgs, rounds)
        check = {}
        for k, out in outs.items():
            twin = tune_flags.exact_twin(variants[k])
            twin = outs["off" if twin == "entry" else twin]
            err = rel_err(out.float(), outs["off"].float())
            check[k] = "same" if torch.equal(out, outs["off"]) else f"{err:.1e}"
            if not torch.equal(out, twin) or err > TOLERANCE[x.dtype]:
                check[k] += " WRONG"
        _, nbytes, _ = work(x, shape, p)
        copy = copy_time(nbytes, dev, 60) * 1e6 if t <= 8 else None
    cells = " | ".join(f"{best[k] * 1e6:.1f}" + (f" ({100 * copy / (best[k] * 1e6):.0f}%)"
                                                 if copy else "") for k in cfgs)  # fmt: skip
    checks = ", ".join(f"{k}: {v}" for k, v in check.items() if k != "off")
    return f"| {name} | {t} | {'skewed' if skewed else 'uniform'} | {cells} | {checks} |"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("shapes", nargs="*", help=f"default: all of {', '.join(SHAPES)}")
    ap.add_argument("--tokens", nargs="+", type=int, default=[8, 64])
    ap.add_argument("--flags", nargs="+", choices=FLAGS, default=list(FLAGS))
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args(argv)
    unknown = [s for s in args.shapes if s not in SHAPES]
    if unknown:
        ap.error(f"unknown shape(s) {unknown}; choose from {list(SHAPES)}")
    names = list(_variants(args.flags))
    print(f"GPU: {torch.cuda.get_device_name()}; graph replay, cold L2, best of {args.rounds} "
          "alternating rounds of do_bench medians, us; (% copy) = same-bytes copy / time (T <= 8)\n")
    print(f"| shape | T | routing | {' | '.join(names)} | output vs off |")
    print("|---|---:|---|" + "---:|" * len(names) + "---|")
    for name in args.shapes or list(SHAPES):
        for t in args.tokens:
            for skewed in (False, True):
                print(_row(name, t, skewed, args.flags, args.rounds), flush=True)


if __name__ == "__main__":
    main()
