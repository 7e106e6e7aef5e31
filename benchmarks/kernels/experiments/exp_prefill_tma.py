"""Prefill GEMM variants on the whole layer: the tuned entry against the same tiles read through
tensor descriptors (`"TMA": true`, `experts/moe/kernels/grouped_gemm_tma.py`), plus per-kernel
GPU time of the layer at the prefill target shapes.

    python -m benchmarks.kernels.experiments.exp_prefill_tma [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from functools import partial
from pathlib import Path

import torch

from benchmarks.kernels._moe_common import (
    SHAPES,
    grouped_mm_layer,
    make_params,
    measure_ceilings,
    skew_offsets,
    triton_layer,
    work,
)
from benchmarks.kernels._timing import bench, graph
from experts.moe.kernels.configs import get_config
from experts.moe.kernels.reference import rel_err


def _variants(base: dict) -> dict[str, dict]:
    def v(**changes) -> dict:
        cfg = copy.deepcopy(base)
        for path, val in changes.items():
            part, key = path.split("__")
            cfg[part][key] = val
        return cfg

    return {
        "tuned": base,
        "tma_gate_up": v(gate_up__TMA=True),
        "tma_down": v(down__TMA=True),
        "tma_both": v(gate_up__TMA=True, down__TMA=True),
        "tma_both_s4": v(
            gate_up__TMA=True, down__TMA=True, gate_up__num_stages=4, down__num_stages=4
        ),
        "tma_both_g16": v(gate_up__TMA=True, down__TMA=True, gate_up__GROUP_M=16, down__GROUP_M=16),
        "tma_gu_s4_down_ptr": v(gate_up__TMA=True, gate_up__num_stages=4),
    }


def _profile(x, shape, p, cfg, reps=20) -> list[tuple[str, float]]:
    flush = torch.empty(256 << 20, dtype=torch.int8, device=x.device)
    g = graph(partial(triton_layer, x, shape, p, cfg))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            flush.zero_()
            g.replay()
        torch.cuda.synchronize()
    out = []
    for evt in prof.key_averages():
        if (
            evt.device_type == torch.autograd.DeviceType.CUDA
            and "zero" not in evt.key
            and "fill" not in evt.key.lower()
        ):
            out.append((evt.key[:60], evt.device_time_total / reps * 1e-6))
    g.reset()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument(
        "--cases",
        nargs="*",
        default=[
            "mixtral-8x7b:4096",
            "qwen3-30b-a3b:16384",
            "mixtral-8x7b:16384",
            "qwen3-30b-a3b:4096",
        ],
    )
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    bw, mm = measure_ceilings(dev)
    print(f"copy {bw / 1e12:.2f} TB/s, matmul {mm / 1e12:.0f} TF/s", flush=True)
    rec: dict = dict(copy=bw, mm=mm, rows=[], profiles={})
    for case in args.cases:
        name, t = case.split(":")
        t = int(t)
        shape = SHAPES[name]
        p = make_params(shape, False, dev)
        for routing in ("uniform", "skewed"):
            if t == 16384 and name == "mixtral-8x7b" and routing == "skewed":
                continue
            p.skew = skew_offsets(p.router) if routing == "skewed" else None
            x = torch.randn(t, shape.h, dtype=torch.bfloat16, device=dev)
            flops, _, _ = work(x, shape, p)
            base = get_config(t, shape.local_e, shape.h, shape.inter, shape.top_k, dev)
            with torch.no_grad():
                ref = grouped_mm_layer(x, shape, p)
                for vname, cfg in _variants(base).items():
                    try:
                        err = rel_err(triton_layer(x, shape, p, cfg), ref)
                        g = graph(partial(triton_layer, x, shape, p, cfg))
                        s = bench(g.replay, 60)
                        g.reset()
                    except Exception as exc:  # a variant that does not compile is recorded
                        print(f"{name} T={t} {routing} {vname}: FAILED {exc!r:.200}", flush=True)
                        continue
                    pct = 100 * flops / s / mm
                    rec["rows"].append(
                        dict(
                            shape=name,
                            T=t,
                            routing=routing,
                            variant=vname,
                            us=s * 1e6,
                            pct_mm=pct,
                            err=err,
                        )
                    )
                    print(
                        f"{name} T={t} {routing} {vname}: {s * 1e6:,.0f} us {pct:.1f}% mm "
                        f"err {err:.1e}",
                        flush=True,
                    )
                if routing == "uniform":
                    for vname in ("tuned", "tma_both"):
                        prof = _profile(x, shape, p, _variants(base)[vname])
                        rec["profiles"][f"{name}:{t}:{vname}"] = prof
                        print(f"-- profile {name} T={t} {vname}", flush=True)
                        for k, v in prof:
                            print(f"   {v * 1e6:8.1f} us  {k}", flush=True)
        p = None
        torch.cuda.empty_cache()
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "exp_prefill_tma.json").write_text(json.dumps(rec, indent=1))


if __name__ == "__main__":
    sys.exit(main())
