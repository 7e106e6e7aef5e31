"""Four-kernel tile entries of one decode bucket, whole layer, over several draws of x.

    python -m benchmarks.kernels.experiments.exp_four_kernel_draws deepseek-v3-32exp:8 [--write]

At small T the routing of one x decides how many experts a call touches, so an entry tuned on
one draw (tune_moe) can be slow on the next. This times the checked-in entry, the entries of the
same T in the other buckets of the device's table, and one-field variants of the checked-in
entry, each over 4 draws x (uniform, skewed) routing (graph replay, L2 flushed, as bench_moe),
and prints the mean. With --write, an entry >= 3% faster than the checked-in one replaces it in a
copy of the device's table written to $OUT/<device>.json (or ./), as the tuners write theirs.
"""

from __future__ import annotations

import json
import os
import sys
from functools import partial
from pathlib import Path

import torch

from benchmarks.kernels._moe_common import SHAPES, make_params, skew_offsets
from benchmarks.kernels._moe_common import triton_layer as layer
from benchmarks.kernels._tables import write_table
from benchmarks.kernels.tune_decode import _time
from experts.moe.kernels.configs import shape_key, tuned_table


def variants(cur: dict) -> list[dict]:
    out = []
    for kind, field, values in (
        ("gate_up", "num_stages", (3, 4, 5)),
        ("gate_up", "num_warps", (2, 4, 8)),
        ("gate_up", "BLOCK_N", (32, 64)),
        ("down", "num_stages", (3, 4, 5)),
        ("down", "num_warps", (2, 4, 8)),
        ("down", "BLOCK_N", (64, 128)),
    ):
        for v in values:
            if cur[kind].get(field) != v:
                out.append(cur | {kind: cur[kind] | {field: v}})
    return out


def main() -> None:
    name, t = sys.argv[1].split(":")
    t = int(t)
    write = "--write" in sys.argv
    dev = torch.device("cuda")
    shape = SHAPES[name]
    table = tuned_table(dev)
    key = shape_key(shape.local_e, shape.h, shape.inter, shape.top_k)
    cur = {k: v for k, v in table[key][str(t)].items() if k != "decode"}
    cands = [("checked-in", cur)]
    cands += [
        (f"entry of {k}", v[str(t)])
        for k, v in table.items()
        if k != key and str(t) in v and "decode" not in v[str(t)]
    ]
    cands += [(f"variant {i}", c) for i, c in enumerate(variants(cur))]
    p = make_params(shape, False, dev)
    skews = (None, skew_offsets(p.router))
    xs = [
        torch.randn(
            t,
            shape.h,
            dtype=torch.bfloat16,
            device=dev,
            generator=torch.Generator(dev).manual_seed(s),
        )
        for s in range(4)
    ]
    scores = []
    with torch.no_grad():
        for label, cfg in cands:
            ts = []
            for x in xs:
                for skew in skews:
                    p.skew = skew
                    ts.append(_time(partial(layer, x, shape, p, cfg)) * 1e6)
            mean = sum(ts) / len(ts)
            scores.append((mean, label, cfg))
            print(
                f"{mean:9.1f} us  {label}: {json.dumps(cfg)}  "
                f"(per draw: {' '.join(f'{v:.0f}' for v in ts)})",
                flush=True,
            )
    best = min(scores, key=lambda s: s[0])
    base = scores[0][0]
    print(
        f"best: {best[1]} {best[0]:.1f} us vs checked-in {base:.1f} us "
        f"({100 * (1 - best[0] / base):.1f}% faster)"
    )
    if write and best[0] <= 0.97 * base:
        table[key][str(t)] = best[2] | (
            {"decode": table[key][str(t)]["decode"]} if "decode" in table[key][str(t)] else {}
        )
        path = write_table(table, Path(os.environ.get("OUT", ".")), dev)
        print(f"wrote {key} T={t} to {path}")


if __name__ == "__main__":
    main()
