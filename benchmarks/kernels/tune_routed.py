"""Sweep the GEMM tiles of the decode buckets that take the ROUTE_IN_GEMM path.

    python -m benchmarks.kernels.tune_routed --out DIR [--shapes ...] [--tokens 8] [--rounds 3]
        [--which gate_up down ranked gate_up_tma down_tma gate_up_wide down_wide prefetch]

There the gate/up kernel routes every token in each program before it streams
(`experts.moe.kernels.routed_gate_up`), so the tiles `tune_moe` chose for the plain kernel need
not be the best: fewer, larger programs route fewer times. For each (shape, T) whose checked-in
entry sets "ROUTE_IN_GEMM", it times the whole layer (router GEMM to output, replayed from a
CUDA graph, L2 flushed; `tune_flags.measure`) with the entry and with each candidate tile
of the GEMMs named by `--which`, over uniform plus skewed routing, best of `--rounds`
alternating rounds. A candidate replaces the entry's tile when its summed time is at least 1%
lower (`_tables.pick`), and only when its output is within the bf16 tolerance of
`torch._grouped_mm`'s layer in 5 calls per routing. `--which ranked` tries the gate/up tiles with
the entry's routing done by counting (`"RANKED"`, `routed_gate_up._route_slot`; plain top-k only)
against the entry as it is; `gate_up_tma` and `down_tma` try the tiles read through tensor
descriptors (`"TMA"`, `grouped_gemm_tma`); `gate_up_wide` and `down_wide` try BLOCK_K 512.
`--which prefetch` tries instead which of `down`'s
programs prefetch their weight tile before they wait (the down entry's "PREFETCH",
`experts.moe.kernels.routed_down`). Writes DIR/<device>.json (copy it to
experts/moe/kernels/configs/) and DIR/tune_routed.json, the per-candidate times.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
from pathlib import Path

import torch

from benchmarks.kernels._moe_common import SHAPES, buckets, table_entry
from benchmarks.kernels._tables import write_table
from benchmarks.kernels.tune_flags import choose, measure, timings
from experts.moe.kernels.configs import tuned_table
from experts.moe.kernels.reference import TOLERANCE

logger = logging.getLogger(__name__)
SMEM_LIMIT = 220 * 1024


def candidates(which: str, block_m: int = 16, wide: bool = False) -> dict[str, dict]:
    """{label: tile} for the GEMM `which`: BLOCK_N, BLOCK_K, warps, stages within shared memory
    (gate/up streams two weight tiles per step, down one). `wide`: BLOCK_K 512 instead, with
    BLOCK_N from 16, so that each weight row is read in 1 KB runs instead of 256-512 B."""
    n_b = 2 if which == "gate_up" else 1
    out = {}
    space = ([16, 32, 64], [512], [4, 8], [2, 3, 4]) if wide else (
        [32, 64, 128], [128, 256], [4, 8], [3, 4, 5])
    for bn, bk, w, s in itertools.product(*space):
        if s * (block_m * bk + n_b * bk * bn) * 2 > SMEM_LIMIT:
            continue
        out[f"{which}:{bn}x{bk}/w{w}/s{s}"] = dict(BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8,
                                                   num_warps=w, num_stages=s)
    return out


#: --which choices that try a flag on a GEMM entry: (GEMM, flags), each tile and the entry's own
VARIANTS = {"ranked": ("gate_up", {"RANKED": True}), "gate_up_tma": ("gate_up", {"TMA": True}),
            "down_tma": ("down", {"TMA": True})}
TILE = ("BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages")


#: --which choices that sweep other tiles of a GEMM: the wide-K tiles of `candidates`
WIDE = {"gate_up_wide": "gate_up", "down_wide": "down"}


#: the GEMM entry each `--which` choice writes
GEMM_OF = {"gate_up": "gate_up", "down": "down", "prefetch": "down", **WIDE,
           **{k: gemm for k, (gemm, _) in VARIANTS.items()}}


def gemm_of(which: str) -> str:
    """The GEMM entry a `--which` choice writes."""
    return GEMM_OF[which]


def prefetch_candidates(down: dict, dev: torch.device) -> dict[str, dict]:
    """{label: down entry} with "PREFETCH" (`experts.moe.kernels.routed_down`): the programs
    lo * SMs .. (lo + n) * SMs - 1 prefetch their tile, with and without "EVICT_LAST"; without
    it where `down` has it."""
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    keys = ("PREFETCH", "PREFETCH_FROM", "EVICT_LAST")
    base = {k: v for k, v in down.items() if k not in keys}
    out = {}
    for (lo, n), last in itertools.product([(0, 1), (0, 2), (1, 1), (2, 1)], [False, True]):
        out[f"prefetch:{lo}+{n}/sm{'/last' if last else ''}"] = base | {
            "PREFETCH": n * sms, "PREFETCH_FROM": lo * sms, "EVICT_LAST": last}
    if "PREFETCH" in down:
        out["prefetch:none"] = base
    return out


def tune_case(name: str, t: int, which: str, rounds: int, dev: torch.device, entry: dict):
    """(the GEMM entry to write, report) for one bucket whose entry, as tuned so far, is `entry`;
    None unless it takes ROUTE_IN_GEMM. Every candidate keeps the entry's flags (RANKED, TMA)."""
    if not entry.get("ROUTE_IN_GEMM") or ("decode" in entry and t <= 16):
        return None
    gemm = gemm_of(which)
    flags = {k: v for k, v in entry[gemm].items() if k not in TILE}
    cands = candidates(gemm, entry["BLOCK_M"], wide=which in WIDE)
    if which in VARIANTS:  # every tile, and the entry's own, with the variant's flag
        flags |= VARIANTS[which][1]
        cands = {f"{which}/{k}": v for k, v in ({"entry": entry[gemm]} | cands).items()}
    if which in WIDE:  # a tensor descriptor's box is at most 256 elements a side
        flags.pop("TMA", None)
    cands = {k: v | flags for k, v in cands.items()
             if not (v | flags).get("TMA") or v["BLOCK_K"] <= 256}
    if which == "prefetch":  # the entry's tile, prefetching in each window
        cands = prefetch_candidates(entry["down"], dev)
    cfgs = {"entry": entry} | {k: entry | {gemm: v} for k, v in cands.items()}
    totals, errs, _ = measure(name, t, cfgs, rounds, dev, calls=5)
    ok = {k: errs[k] < TOLERANCE[torch.bfloat16] for k in cfgs}
    chosen = choose(name, t, totals, errs, ok, "entry")
    report = dict(shape=name, T=t, gemm=which, chosen=chosen, **timings(totals, errs))
    return cfgs[chosen][gemm], report


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--tokens", nargs="+", type=int, default=[8])
    ap.add_argument("--which", nargs="+", default=["gate_up"],
                    choices=list(GEMM_OF))
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    table = tuned_table(dev)
    report = []
    for name, t, key in buckets(args.shapes, args.tokens):
        entry = table_entry(table, name, t, key, dev)
        for which in args.which:  # in turn: down is swept with the gate/up just chosen
            found = tune_case(name, t, which, args.rounds, dev, entry)
            if found is None:
                logger.warning("%s T=%d: no ROUTE_IN_GEMM entry, skipped", name, t)
                break
            tile, rep = found
            entry[gemm_of(which)] = tile
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
