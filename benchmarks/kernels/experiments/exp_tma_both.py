"""Experiment: TMA weight tiles in both GEMMs of the routed decode path, at the two T=8 buckets.

    python -m benchmarks.kernels.experiments.exp_tma_both

Times the whole layer (`tune_flags.measure`: uniform plus skewed routing, graph replay, L2
flushed, best of 5 alternating rounds; printed as the mean of the two routings, us) with the
checked-in entry, with "TMA" added to its gate/up, its down or both, and with the tiles
`tune_routed --which gate_up_tma down_tma` found fastest on an H100 (NOTES.md, Session 19), read
through TMA in gate/up alone or in both.
"""

from __future__ import annotations

import torch

from benchmarks.kernels._moe_common import buckets, table_entry
from benchmarks.kernels.tune_flags import measure
from experts.moe.kernels.configs import tuned_table


def main() -> None:
    dev = torch.device("cuda")
    table = tuned_table(dev)
    for name, t, key in buckets(["qwen3-30b-a3b", "olmoe-1b-7b"], [8]):
        e = table_entry(table, name, t, key, dev)
        gu = e["gate_up"] | {"TMA": True}
        dn = e["down"] | {"TMA": True}
        tile = dict(BLOCK_K=128, GROUP_M=8, num_warps=4)
        gu2 = gu | tile | dict(BLOCK_N=128 if name.startswith("qwen3") else 64, num_stages=3)
        dn2 = dn | tile | dict(BLOCK_N=64, num_stages=4)
        cfgs = {"entry": e, "tma_gate_up": e | {"gate_up": gu}, "tma_down": e | {"down": dn},
                "tma_both": e | {"gate_up": gu, "down": dn},
                "tma_best_gate_up": e | {"gate_up": gu2},
                "tma_best_both": e | {"gate_up": gu2, "down": dn2}}  # fmt: skip
        totals, errs, _ = measure(name, t, cfgs, 5, dev, calls=5)
        print(name, t, {k: round(v * 1e6 / 2, 1) for k, v in totals.items()},
              f"worst err {max(errs.values()):.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
