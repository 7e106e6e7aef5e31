"""Decide, per shape and decode bucket, the aligned path's layer settings PDL, SLOT_LAYOUT,
ROUTE_WARPS and ROUTE_IN_GEMM.

    python -m benchmarks.kernels.tune_flags --out DIR [--shapes ...] [--tokens 8] [--rounds 3]

For each (shape, T) whose tuned entry takes the aligned path (no "decode" entry), it times the
whole layer (router GEMM to output, replayed from a CUDA graph, L2 flushed) with the checked-in
entry stripped of the settings and with each combination of them (PDL: programmatic dependent
launches, `grouped_gemm._launch`; SLOT_LAYOUT: `route_align(slot_layout=True)`; ROUTE_WARPS:
route_align's warp count, 8 or 16 against the default 4; ROUTE_IN_GEMM: no route_align, the
gate/up GEMM routes, `routed_gate_up`), over uniform plus skewed routing;
rounds alternate the order and each time is the best of the rounds. The fastest combination
replaces the checked-in one when its summed time is at least 1% lower (`_tables.pick`: a tie
keeps what is checked in). Every combination's output stays within the bf16 tolerance of
`torch._grouped_mm`'s layer in 20 repeated calls per routing. PDL and SLOT_LAYOUT change no
arithmetic, so a combination must also give the bits of the same combination without them;
ROUTE_WARPS and ROUTE_IN_GEMM may change the order of the softmax's sums (a last-bit difference
in the routing weights), so they are held to the tolerance only. (Session 11 also tried an
atomic combine here, Session 12 a prefetch of `down`'s first tiles, Session 17 a combine by
`down`'s last programs; all were slower; NOTES.md Sessions 11, 12 and 17 say where their code
is.)
Writes DIR/<device>.json (copy it to experts/moe/kernels/configs/) and
DIR/tune_flags.json, the per-variant times.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
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
from benchmarks.kernels._timing import best_of_rounds
from experts.moe.kernels.configs import get_config, tuned_table
from experts.moe.kernels.reference import TOLERANCE, rel_err

logger = logging.getLogger(__name__)
MARGIN = 0.99  # settings must save at least 1% of the checked-in settings' time to replace them
#: each layer setting and the values tried besides leaving it unset
FLAGS: dict[str, tuple] = {"PDL": (True,), "SLOT_LAYOUT": (True,), "ROUTE_WARPS": (8, 16),
                           "ROUTE_IN_GEMM": (True,)}
#: settings of route_align, which a variant with ROUTE_IN_GEMM does not launch
ROUTE_ALIGN = ("SLOT_LAYOUT", "ROUTE_WARPS")
#: settings that change no arithmetic: a variant must give the bits of itself without them
EXACT = ("PDL", "SLOT_LAYOUT")


def _name(settings: dict) -> str:
    return "+".join(k if v is True else f"{k}={v}" for k, v in settings.items()) or "entry"


def flag_variants(flags) -> dict[str, dict]:
    """{"entry": {}} and every combination of the named settings' values (`FLAGS`), each named
    like "PDL+ROUTE_WARPS=8" and given as {setting: value}."""
    choices = [[(f, None), *((f, v) for v in FLAGS[f])] for f in flags]
    out = {}
    for combo in itertools.product(*choices):
        settings = {f: v for f, v in combo if v is not None}
        if settings.get("ROUTE_IN_GEMM") and any(f in settings for f in ROUTE_ALIGN):
            continue  # the same launches as without them
        out[_name(settings)] = settings
    return out


def exact_twin(settings: dict) -> str:
    """The variant that `settings` must match bit for bit: the same, without the EXACT settings."""
    return _name({k: v for k, v in settings.items() if k not in EXACT})


VARIANTS = flag_variants(FLAGS)


def run_variants(x, shape, p, cfgs: dict[str, dict], rounds: int):
    """For the routing `p` carries: ({variant: output}, {variant: best-of-rounds seconds}), the
    whole layer replayed from a CUDA graph with each config of `cfgs`."""
    outs = {k: layer(x, shape, p, c) for k, c in cfgs.items()}
    return outs, best_of_rounds({k: partial(layer, x, shape, p, c) for k, c in cfgs.items()}, rounds)


def tune_case(name: str, t: int, rounds: int, dev: torch.device) -> tuple[dict, dict] | None:
    """(flags to add, report) for one bucket; None when its entry takes the decode kernel."""
    shape = SHAPES[name]
    entry = get_config(t, shape.local_e, shape.h, shape.inter, shape.top_k, dev)
    if "decode" in entry and t <= 16:
        return None
    base = {k: v for k, v in entry.items() if k not in FLAGS}
    cfgs = {k: base | v for k, v in VARIANTS.items()}
    totals, errs, outputs = measure(name, t, cfgs, rounds, dev, calls=20)
    same_bits = {k: all(torch.equal(o[k], o[exact_twin(VARIANTS[k])]) for o in outputs)
                 for k in cfgs}  # fmt: skip
    ok = {k: errs[k] < TOLERANCE[torch.bfloat16] and same_bits[k] for k in cfgs}
    checked_in = _name({f: entry[f] for f in FLAGS if f in entry})
    incumbent = checked_in if ok.get(checked_in) else "entry"
    chosen = choose(name, t, totals, errs, ok, incumbent)
    report = dict(shape=name, T=t, chosen=chosen,
                  **{f"{k}_same_bits": same_bits[k] for k in cfgs}, **timings(totals, errs))
    return VARIANTS[chosen], report


def measure(name: str, t: int, cfgs: dict[str, dict], rounds: int, dev: torch.device,
            calls: int) -> tuple[dict, dict, list[dict]]:  # fmt: skip
    """Each layer config of `cfgs` at shape `name`, T tokens (one seeded x), over uniform then
    skewed routing: ({config: summed best-of-rounds seconds}, {config: worst error against
    `torch._grouped_mm`'s layer over `calls` repeated calls per routing}, [each routing's
    {config: output}])."""
    shape = SHAPES[name]
    p = make_params(shape, False, dev)
    x = torch.randn(t, shape.h, dtype=torch.bfloat16, device=dev,
                    generator=torch.Generator(dev).manual_seed(t))
    totals = dict.fromkeys(cfgs, 0.0)
    errs = dict.fromkeys(cfgs, 0.0)
    outputs = []
    with torch.no_grad():
        for skew in (None, skew_offsets(p.router)):
            p.skew = skew
            ref = grouped_mm_layer(x, shape, p)
            outs, times = run_variants(x, shape, p, cfgs, rounds)
            outputs.append(outs)
            for k, c in cfgs.items():
                for _ in range(calls):
                    errs[k] = max(errs[k], rel_err(layer(x, shape, p, c), ref))
            for k, v in times.items():
                totals[k] += v
    return totals, errs, outputs


def choose(name: str, t: int, totals: dict, errs: dict, ok: dict, incumbent: str) -> str:
    """The config `pick` keeps among those `ok` (the "entry" must be one of them)."""
    if not ok["entry"]:
        raise SystemExit(f"{name} T={t}: the checked-in entry is off by {errs['entry']:.2e}")
    return pick({k: totals[k] for k in totals if ok[k]}, incumbent, MARGIN)


def timings(totals: dict, errs: dict) -> dict:
    """The report's per-config fields: mean time over the two routings (us), worst error."""
    return {**{f"{k}_us": v * 1e6 / 2 for k, v in totals.items()},
            **{f"{k}_worst_err": v for k, v in errs.items()}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--tokens", nargs="+", type=int, default=[8])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    table = tuned_table(dev)
    report = []
    for name, t, key in buckets(args.shapes, args.tokens):
        found = tune_case(name, t, args.rounds, dev)
        if found is None:
            logger.warning("%s T=%d: the decode kernel's bucket, skipped", name, t)
            continue
        flags, rep = found
        entry = table_entry(table, name, t, key, dev)
        for f in FLAGS:
            entry.pop(f, None)
        entry.update(flags)
        report.append(rep)
        logger.warning("%s T=%d: %s", name, t, json.dumps(rep))
        write_table(table, args.out, dev)
        (args.out / "tune_flags.json").write_text(json.dumps(report, indent=1))
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
