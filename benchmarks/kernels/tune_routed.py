"""Sweep the GEMM tiles of the decode buckets that take the ROUTE_IN_GEMM path.

    python -m benchmarks.kernels.tune_routed --out DIR [--shapes ...] [--tokens 8] [--rounds 3]
        [--which gate_up down]

There the gate/up kernel routes every token in each program before it streams
(`experts.moe.kernels.routed_gate_up`), so the tiles `tune_moe` chose for the plain kernel need
not be the best: fewer, larger programs route fewer times. For each (shape, T) whose checked-in
entry sets "ROUTE_IN_GEMM", it times the whole layer (router GEMM to output, replayed from a
CUDA graph, L2 flushed; `tune_flags.run_variants`) with the entry and with each candidate tile
of the GEMMs named by `--which`, over uniform plus skewed routing, best of `--rounds`
alternating rounds; the gate/up sweep also tries the entry's tile with "PERSISTENT" (a few
programs per SM, each routing once and looping over its items). A candidate replaces the
entry's tile when its summed time is at least 1% lower (`_tables.pick`), and only when its
output is within the bf16 tolerance of `torch._grouped_mm`'s layer in 5 calls per routing. Writes DIR/<device>.json (copy it to
experts/moe/kernels/configs/) and DIR/tune_routed.json, the per-candidate times.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
from pathlib import Path

import torch

from benchmarks.kernels._moe_common import (
    SHAPES,
    buckets,
    grouped_mm_layer,
    make_params,
    skew_offsets,
)
from benchmarks.kernels._moe_common import triton_layer as layer
from benchmarks.kernels._tables import pick, write_table
from benchmarks.kernels.tune_flags import run_variants
from experts.moe.kernels.configs import get_config, shape_key, tuned_table
from experts.moe.kernels.reference import TOLERANCE, rel_err

logger = logging.getLogger(__name__)
MARGIN = 0.99
SMEM_LIMIT = 220 * 1024
PERSISTENT = (2, 4, 8)  # programs per SM tried with the entry's gate/up tile


def candidates(which: str, block_m: int = 16) -> dict[str, dict]:
    """{label: tile} for the GEMM `which`: BLOCK_N, BLOCK_K, warps, stages within shared memory
    (gate/up streams two weight tiles per step, down one)."""
    n_b = 2 if which == "gate_up" else 1
    out = {}
    for bn, bk, w, s in itertools.product([32, 64, 128], [128, 256], [4, 8], [3, 4, 5]):
        if s * (block_m * bk + n_b * bk * bn) * 2 > SMEM_LIMIT:
            continue
        out[f"{which}:{bn}x{bk}/w{w}/s{s}"] = dict(BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8,
                                                   num_warps=w, num_stages=s)
    return out


def tune_case(name: str, t: int, which: str, rounds: int, dev: torch.device, table: dict):
    """(the GEMM entry to write, report) for one bucket of `table` (the entry as tuned so far);
    None unless it takes ROUTE_IN_GEMM."""
    shape = SHAPES[name]
    entry = table.get(shape_key(shape.local_e, shape.h, shape.inter, shape.top_k), {}).get(
        str(t)) or get_config(t, shape.local_e, shape.h, shape.inter, shape.top_k, dev)
    if not entry.get("ROUTE_IN_GEMM") or ("decode" in entry and t <= 16):
        return None
    cfgs = {"entry": entry} | {k: entry | {which: v} for k, v in
                               candidates(which, entry["BLOCK_M"]).items()}
    if which == "gate_up":  # the entry's tile with a few programs per SM, each routing once
        for per_sm in PERSISTENT:
            cfgs[f"gate_up:entry/persistent{per_sm}"] = entry | {
                "gate_up": entry["gate_up"] | {"PERSISTENT": per_sm}}
    p = make_params(shape, False, dev)
    x = torch.randn(t, shape.h, dtype=torch.bfloat16, device=dev,
                    generator=torch.Generator(dev).manual_seed(t))
    totals = dict.fromkeys(cfgs, 0.0)
    errs = dict.fromkeys(cfgs, 0.0)
    with torch.no_grad():
        for skew in (None, skew_offsets(p.router)):
            p.skew = skew
            ref = grouped_mm_layer(x, shape, p)
            _, times = run_variants(x, shape, p, cfgs, rounds)
            for k, c in cfgs.items():
                for _ in range(5):
                    errs[k] = max(errs[k], rel_err(layer(x, shape, p, c), ref))
            for k, v in times.items():
                totals[k] += v
    ok = {k: errs[k] < TOLERANCE[torch.bfloat16] for k in cfgs}
    if not ok["entry"]:
        raise SystemExit(f"{name} T={t}: the checked-in entry is off by {errs['entry']:.2e}")
    chosen = pick({k: totals[k] for k in cfgs if ok[k]}, "entry", MARGIN)
    report = dict(shape=name, T=t, gemm=which, chosen=chosen,
                  **{f"{k}_us": totals[k] * 1e6 / 2 for k in cfgs},
                  **{f"{k}_worst_err": errs[k] for k in cfgs})
    return cfgs[chosen][which], report


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--tokens", nargs="+", type=int, default=[8])
    ap.add_argument("--which", nargs="+", default=["gate_up"], choices=["gate_up", "down"])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    table = tuned_table(dev)
    report = []
    for name, t, key in buckets(args.shapes, args.tokens):
        for which in args.which:  # in turn: down is swept with the gate/up just chosen
            found = tune_case(name, t, which, args.rounds, dev, table)
            if found is None:
                logger.warning("%s T=%d: no ROUTE_IN_GEMM entry, skipped", name, t)
                break
            tile, rep = found
            table[key][str(t)][which] = tile
            report.append(rep)
            best = min((k for k in rep if k.endswith("_us")), key=rep.__getitem__)
            logger.warning("%s T=%d %s: chosen %s (%.1f us; entry %.1f us, fastest %s %.1f)",
                           name, t, which, rep["chosen"], rep[f"{rep['chosen']}_us"],
                           rep["entry_us"], best[:-3], rep[best])
            write_table(table, args.out, dev)
            (args.out / "tune_routed.json").write_text(json.dumps(report, indent=1))
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
