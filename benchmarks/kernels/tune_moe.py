"""Tile-config sweep for the MoE grouped GEMMs; writes configs/<device>.json entries.

    python -m benchmarks.kernels.tune_moe --out DIR [--shapes ...] [--tokens ...]

For every (shape, T) it times `gate_up` and `down` alone over a small candidate set for each
BLOCK_M, keeps the BLOCK_M with the least summed time, and writes the winners to
DIR/<device>.json (copy it to experts/moe/kernels/configs/). The time of a candidate is the sum over
uniform and skewed routing (a config must not collapse when experts are unevenly loaded); bf16.
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
    TOKENS,
    buckets,
    logits_of,
    make_params,
    skew_offsets,
    to_local,
)
from benchmarks.kernels._tables import write_table
from experts.moe.kernels.configs import tuned_table

logger = logging.getLogger(__name__)
SMEM_LIMIT = 220 * 1024


def _cands(rows_per_expert: float, n_b: int) -> list[tuple[int, dict]]:
    out = []
    if rows_per_expert <= 16:
        # GROUP_M=8: under skew an expert spans several row blocks, which then share each
        # weight tile through L2 instead of streaming the expert once per block.
        space = itertools.product([16, 32], [16, 32, 64, 128], [128, 256], [2, 4], [4, 5], [8])
    elif rows_per_expert <= 160:
        space = itertools.product([16, 32, 64], [64, 128], [64, 128], [4], [4], [8])
    else:
        space = itertools.product([64, 128], [64, 128, 256], [64], [4, 8], [3, 4], [8, 16])
    for bm, bn, bk, w, s, gm in space:
        if s * (bm * bk + n_b * bk * bn) * 2 > SMEM_LIMIT:
            continue
        if n_b == 2 and bn == 256:
            continue  # two 256-wide accumulators spill
        out.append((bm, dict(BLOCK_N=bn, BLOCK_K=bk, GROUP_M=gm, num_warps=w, num_stages=s)))
    return out


def _time(fn) -> float:
    import triton.testing

    try:
        return triton.testing.do_bench(fn, warmup=5, rep=25, return_mode="median") * 1e-3
    except Exception as exc:  # out of resources etc.: skip this candidate
        logger.warning("candidate failed: %s", str(exc).splitlines()[0][:120])
        return float("inf")


def tune_case(name: str, t: int, dev: torch.device) -> tuple[dict, dict]:
    from experts.moe.kernels.align import align
    from experts.moe.kernels.grouped_gemm import down, gate_up
    from experts.moe.kernels.routing import route

    shape = SHAPES[name]
    p = make_params(shape, False, dev)
    x = torch.randn(t, shape.h, dtype=torch.bfloat16, device=dev)
    el = shape.local_e
    routed = []  # uniform and skewed routings: the winner minimises their summed time
    for skew in (None, skew_offsets(p.router)):
        p.skew = skew
        ids, w = route(logits_of(x, shape, p), shape.routing, p.bias)
        routed.append((to_local(ids, shape), w))
    rows = t * shape.top_k / shape.e
    best: dict[int, list] = {}
    for kind, n_b in (("gate_up", 2), ("down", 1)):
        for bm, cfg in _cands(rows, n_b):
            c = cfg | {"BLOCK_M": bm}
            dt = 0.0
            for ids, w in routed:
                sorted_ids, block_expert, num_padded, _ = align(ids, el, bm)
                h = torch.randn(sorted_ids.numel(), shape.inter, dtype=torch.bfloat16,
                                device=dev)
                if kind == "gate_up":
                    fn = partial(gate_up, x, p.w13, sorted_ids, block_expert, num_padded,
                                 shape.top_k, c, out=h)
                else:
                    y = torch.empty(sorted_ids.numel(), shape.h, dtype=torch.bfloat16,
                                    device=dev)
                    fn = partial(down, h, p.w2, w.reshape(-1), sorted_ids, block_expert,
                                 num_padded, c, out=y)
                dt += _time(fn)
            slot = best.setdefault(bm, [None, float("inf"), None, float("inf")])
            i = 0 if kind == "gate_up" else 2
            if dt < slot[i + 1]:
                slot[i], slot[i + 1] = cfg, dt
    bm, (gu, t_gu, dn, t_dn) = min(best.items(), key=lambda kv: kv[1][1] + kv[1][3])
    timing = dict(gate_up_us_uniform_plus_skewed=t_gu * 1e6, down_us_uniform_plus_skewed=t_dn * 1e6)
    return dict(BLOCK_M=bm, gate_up=gu, down=dn), timing


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--tokens", nargs="+", type=int, default=list(TOKENS))
    ap.add_argument("--budget-s", type=float, default=400.0, help="stop starting new cases after")
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    # Start from the checked-in table, so a partial sweep updates only the cases it ran.
    table = tuned_table(dev)
    start = time.time()
    for name, t, key in buckets(args.shapes, args.tokens):
        if time.time() - start > args.budget_s:
            logger.warning("budget spent; skipping %s T=%d", name, t)
            continue
        cfg, timing = tune_case(name, t, dev)
        table.setdefault(key, {})[str(t)] = cfg
        logger.warning("%s T=%d: %s %s (%.0fs)", name, t, json.dumps(cfg), timing,
                       time.time() - start)
        write_table(table, args.out, dev)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
