"""Decide, per shape and decode bucket, between the one-launch decode paths and the 4-kernel path.

    python -m benchmarks.kernels.tune_decode --out DIR [--shapes ...] [--tokens 1 8]
        [--kinds decode staged]

For each (shape, T) it times the whole layer (router GEMM to output, replayed from a CUDA graph,
L2 flushed) on uniform plus skewed routing: first the current path from the checked-in table,
then each one-launch kind over a small tile sweep and a refinement around its best:
`decode` (`experts.moe.kernels.decode.moe_decode`) and `staged` (`experts.moe.kernels.staged`,
ordered gate/up and down work items). The checked-in "decode" entry is timed beside them
(reported as `current`), so `--kinds staged` alone cannot drop a faster one. The fastest path
replaces the checked-in one (the "decode" entry, or the four-kernel path where there is none) only
when it is at least 3% faster (`_tables.pick`): a tie keeps what is checked in, and the
four-kernel path's combine is deterministic where the atomics are not. The result is the bucket's
"decode" entry of DIR/<device>.json, or none (copy it to experts/moe/kernels/configs/). The
winner is then run 50 times against `torch._grouped_mm`'s layer (its fp32 atomics must never
lose an update). The report gives each kind's best time, chosen or not.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from functools import partial
from pathlib import Path

import torch

from benchmarks.kernels._moe_common import (
    SHAPES,
    buckets,
    grouped_mm_layer,
    make_params,
    skew_offsets,
    table_entry,
)
from benchmarks.kernels._moe_common import triton_layer as layer
from benchmarks.kernels._tables import pick, write_table
from benchmarks.kernels._timing import graph_time
from experts.moe.kernels.configs import get_config, tuned_table
from experts.moe.kernels.reference import TOLERANCE, rel_err

logger = logging.getLogger(__name__)
MARGIN = 0.97  # a path must be at least 3% faster than the checked-in one to replace it


KINDS = ("decode", "staged")


def _cands(kind: str) -> list[dict]:
    if kind == "staged":
        return [dict(STAGED=True, BLOCK_N=bn, BLOCK_K=128, BLOCK_H=bh, BLOCK_KD=bkd, num_warps=4,
                     num_stages=4)
                for bn, bh, bkd in itertools.product([32, 64], [32, 64, 128], [128, 256])]  # fmt: skip
    return [
        dict(BLOCK_I=bi, BLOCK_K=bk, BLOCK_H=bh, num_warps=4, num_stages=3)
        for bi, bk, bh in itertools.product([16, 32, 64, 128], [128, 256], [128, 256])
    ]


def _refine(best: dict) -> list[dict]:
    if best.get("STAGED"):
        return [best | dict(num_warps=8), best | dict(num_stages=3), best | dict(num_stages=5),
                best | dict(BLOCK_K=256), best | dict(maxnreg=128), best | dict(maxnreg=96)]  # fmt: skip
    return [best | dict(num_warps=8), best | dict(num_stages=2), best | dict(num_stages=4)]


def _time(fn) -> float:
    try:
        return graph_time(fn, 40)
    except Exception as exc:  # out of resources etc.: skip this candidate
        logger.warning("candidate failed: %s", str(exc).splitlines()[0][:160])
        return float("inf")


def tune_case(
    name: str, t: int, dev: torch.device, kinds: tuple[str, ...] = KINDS
) -> tuple[dict | None, dict]:
    shape = SHAPES[name]
    p = make_params(shape, False, dev)
    x = torch.randn(t, shape.h, dtype=torch.bfloat16, device=dev)
    base = get_config(t, shape.local_e, shape.h, shape.inter, shape.top_k, dev)
    current = base.get("decode")
    base = {k: v for k, v in base.items() if k != "decode"}
    skews = (None, skew_offsets(p.router))

    def total(cfg: dict) -> float:
        s = 0.0
        for skew in skews:
            p.skew = skew
            s += _time(partial(layer, x, shape, p, cfg))
        return s

    with torch.no_grad():
        t_base = total(base)
        per_kind = {}
        for kind in kinds:
            scores = [(total(base | {"decode": c}), c) for c in _cands(kind)]
            kind_t, kind_best = min(scores, key=lambda s: s[0])
            scores = [(kind_t, kind_best)] + [(total(base | {"decode": c}), c)
                                              for c in _refine(kind_best)]  # fmt: skip
            per_kind[kind] = min(scores, key=lambda s: s[0])
        if current is not None:  # a sweep of fewer kinds must not drop a faster checked-in entry
            per_kind["current"] = (total(base | {"decode": current}), current)
        times = {"four_kernel": t_base} | {k: v[0] for k, v in per_kind.items()}
        chosen = pick(times, "current" if current is not None else "four_kernel", MARGIN)
        best = None if chosen == "four_kernel" else per_kind[chosen][1]
        worst = 0.0
        for skew in skews:
            p.skew = skew
            ref = grouped_mm_layer(x, shape, p)
            for _ in range(50):
                cfg = base if best is None else base | {"decode": best}
                worst = max(worst, rel_err(layer(x, shape, p, cfg), ref))
    timing = dict(
        four_kernel_us=t_base * 1e6 / 2,
        **{f"{k}_us": v[0] * 1e6 / 2 for k, v in per_kind.items()},
        **{f"{k}_config": v[1] for k, v in per_kind.items()},
        worst_rel_err_50_runs=worst,
        ok=worst < TOLERANCE[torch.bfloat16],
    )
    if not timing["ok"]:
        raise SystemExit(f"{name} T={t}: decode kernel off by {worst:.2e} in 50 runs")
    return best, timing


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--tokens", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    table = tuned_table(dev)
    report = []
    start = time.time()
    for name, t, key in buckets(args.shapes, args.tokens):
        best, timing = tune_case(name, t, dev, tuple(args.kinds))
        entry = table_entry(table, name, t, key, dev)
        entry.pop("decode", None)
        if best is not None:
            entry["decode"] = best
        report.append(dict(shape=name, T=t, decode=best, **timing))
        logger.warning(
            "%s T=%d: %s (%.0fs)", name, t, json.dumps(report[-1]), time.time() - start
        )
        write_table(table, args.out, dev)
        (args.out / "tune_decode.json").write_text(json.dumps(report, indent=1))
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
