"""Whole MoE layer benchmark, routing to combine, on the GPU.

    python -m benchmarks.kernels.bench_moe --out DIR          # on the GPU machine
    python -m benchmarks.kernels.bench_moe --results-from DIR/moe_bench.md   # here: RESULTS.md

Compares, on the same inputs and in the same run: the Triton layer replayed from a CUDA graph
(it never synchronises with the host, so it can be captured), the same layer launched eagerly,
transformers' per-expert eager loop, and a `torch._grouped_mm` layer. Each row reports time,
TFLOP/s, GB/s over the fewest bytes (touched experts' weights, router, x, out) and the % of the
roofline floor max(bytes / copy bandwidth, FLOPs / bf16 matmul rate), both ceilings measured at
the start of the run. Timing: triton.testing.do_bench medians, L2 flushed between calls.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from functools import partial
from pathlib import Path

import torch

from benchmarks.kernels._moe_common import (
    SHAPES,
    TOKENS,
    eager_loop_layer,
    fmt_us,
    grouped_mm_layer,
    logits_of,
    make_params,
    measure_ceilings,
    skew_offsets,
    triton_layer,
    work,
)
from benchmarks.kernels._timing import bench, copy_time, graph, read_after_time, read_times
from experts.moe.kernels.reference import TOLERANCE, rel_err

logger = logging.getLogger(__name__)


def run(args: argparse.Namespace) -> list[dict]:
    dev = torch.device("cuda")
    bw, mm = measure_ceilings(dev)
    logger.warning("ceilings: copy %.2f TB/s, bf16 matmul %.0f TFLOP/s", bw / 1e12, mm / 1e12)
    meta = dict(gpu=torch.cuda.get_device_name(), copy_Bps=bw, matmul_flops=mm,
                torch=torch.__version__, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    rows: list[dict] = []
    for name in args.shapes:
        shape = SHAPES[name]
        params = make_params(shape, skewed=False, device=dev)
        for routing in args.routings:
            params.skew = skew_offsets(params.router) if routing == "skewed" else None
            for t in args.tokens:
                # One fixed draw per (shape, T): runs stay comparable row by row (a decode row's
                # bytes depend on which experts x routes to).
                gen = torch.Generator(dev).manual_seed(t)
                x = torch.randn(t, shape.h, dtype=torch.bfloat16, device=dev, generator=gen)
                flops, nbytes, stats = work(x, shape, params)
                floor = max(nbytes / bw, flops / mm)
                row = dict(shape=name, T=t, routing=routing, flops=flops, bytes=nbytes,
                           floor_s=floor, bound="memory" if nbytes / bw > flops / mm else "compute",
                           **stats)
                with torch.no_grad():
                    ours = triton_layer(x, shape, params)
                    ref = grouped_mm_layer(x, shape, params)
                    row["rel_err_vs_grouped_mm"] = rel_err(ours, ref)
                    row["correct"] = row["rel_err_vs_grouped_mm"] < TOLERANCE[torch.bfloat16]
                    g = graph(partial(triton_layer, x, shape, params))
                    row["ours_graph_s"] = bench(g.replay, args.rep)
                    for key, fn in (("ours_eager_s", triton_layer),
                                    ("grouped_mm_s", grouped_mm_layer),
                                    ("eager_loop_s", eager_loop_layer)):
                        row[key] = bench(partial(fn, x, shape, params), args.rep)
                    g.reset()
                if t <= args.copy_ref_max_t:
                    row["copy_same_bytes_s"] = copy_time(nbytes, dev, args.rep)
                    reads = row["read_only_s"] = read_times(nbytes, dev, args.rep)
                    row["router_read_s"] = read_after_time(
                        partial(logits_of, x, shape, params), nbytes, min(reads, key=reads.get),
                        dev, args.rep)  # fmt: skip
                rows.append(row)
                _save(args.out, [meta, *rows])  # partial results survive a timeout
                logger.warning(
                    "%s T=%d %s: ours %s us (%.0f%% floor, %.0f TF/s), grouped_mm %s, loop %s, "
                    "err %.1e", name, t, routing, fmt_us(row["ours_graph_s"]),
                    100 * floor / row["ours_graph_s"], flops / row["ours_graph_s"] / 1e12,
                    fmt_us(row["grouped_mm_s"]), fmt_us(row["eager_loop_s"]),
                    row["rel_err_vs_grouped_mm"],
                )
        params = None
        torch.cuda.empty_cache()
    return [meta, *rows]


def _save(out: Path | None, records: list[dict]) -> None:
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / "moe_bench.json").write_text(json.dumps(records, indent=1))
    (out / "moe_bench.md").write_text(markdown(records))


def _copy_pct(r: dict) -> str:
    c = r.get("copy_same_bytes_s")
    return f"{100 * r['floor_s'] / c:.0f}%" if c else "-"


def _pct_of_copy(r: dict, t: float | None) -> str:
    c = r.get("copy_same_bytes_s")
    return f"{100 * c / t:.0f}%" if c and t else "-"


def _best_read(r: dict) -> float | None:
    return min(r["read_only_s"].values()) if r.get("read_only_s") else None


def markdown(records: list[dict]) -> str:
    meta, rows = records[0], records[1:]
    lines = [
        f"GPU: {meta['gpu']}; measured in the same run: copy {meta['copy_Bps'] / 1e12:.2f} TB/s "
        f"(read + write), bf16 matmul {meta['matmul_flops'] / 1e12:.0f} TFLOP/s (8192^3, random "
        f"data); torch {meta['torch']}.",
        "",
        "Whole layer (router GEMM, routing, alignment, gate/up + SwiGLU, down, combine), bf16. "
        "`ours` = Triton layer replayed from a CUDA graph; `ours eager` = the same launched "
        "from Python; `loop` = transformers-style per-expert eager loop; `gmm` = "
        "`torch._grouped_mm` layer. % floor = roofline floor / time (floor = max(bytes / copy BW,"
        " FLOPs / matmul rate); bytes = touched experts' weights + router + x + out). "
        "Skewed routing: Zipf-like logit offsets (max share = busiest expert's slot share). "
        "`copy` = a device-to-device copy of the floor's bytes timed the same way: the share of "
        "the floor that a plain copy of this size reaches (decode rows). `% copy` = copy time / "
        "ours (the decode target is 90%); `read % copy` = copy time / the fastest read-only "
        "stream of the same bytes (`benchmarks/kernels/_streams.py`, best of its designs), i.e. "
        "the most that any layer, which must read those bytes, could show in `% copy`; "
        "`router+read % copy` = copy time / (the router GEMM, then that fastest read, in one "
        "graph), the most that a layer whose router is its own kernel (as in a served model, "
        "where the gate is the model's own linear layer) could show.",
        "",
        "| model | T | routing | max share | ours us | TFLOP/s | GB/s | % floor | bound | "
        "copy % floor | % copy | read % copy | router+read % copy | ours eager us | gmm us | "
        "loop us | speedup vs best baseline | err |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        t = r["ours_graph_s"]
        best = min(r["grouped_mm_s"], r["eager_loop_s"])
        lines.append(
            f"| {r['shape']} | {r['T']} | {r['routing']} | {r['max_share']:.2f} | {fmt_us(t)} | "
            f"{r['flops'] / t / 1e12:.1f} | {r['bytes'] / t / 1e9:,.0f} | "
            f"{100 * r['floor_s'] / t:.0f}% | {r['bound']} | {_copy_pct(r)} | "
            f"{_pct_of_copy(r, t)} | {_pct_of_copy(r, _best_read(r))} | "
            f"{_pct_of_copy(r, r.get('router_read_s'))} | "
            f"{fmt_us(r['ours_eager_s'])} | "
            f"{fmt_us(r['grouped_mm_s'])} | {fmt_us(r['eager_loop_s'])} | {best / t:.2f}x | "
            f"{r['rel_err_vs_grouped_mm']:.1e}{'' if r['correct'] else ' FAIL'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, help="folder for moe_bench.json / moe_bench.md")
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--tokens", nargs="+", type=int, default=list(TOKENS))
    ap.add_argument("--routings", nargs="+", default=["uniform", "skewed"],
                    choices=["uniform", "skewed"])
    ap.add_argument("--copy-ref-max-t", type=int, default=8,
                    help="time a same-bytes device copy for rows with T <= this")
    ap.add_argument("--rep", type=int, default=60, help="do_bench repetition time, ms")
    ap.add_argument("--results-from", type=Path,
                    help="write this moe_bench.md into benchmarks/RESULTS.md and exit")
    args = ap.parse_args(argv)
    if args.results_from:
        from benchmarks._results import write_section

        body = args.results_from.read_text()
        gpu = body.split(";", 1)[0].removeprefix("GPU: ")
        h200 = "H200" in gpu  # each GPU's table has its own section
        write_section("kernels-h200" if h200 else "kernels",
                      "Sparse MoE layer (Triton kernels)" + (", H200" if h200 else ""),
                      "python -m benchmarks.kernels.bench_moe --out DIR", f"1x {gpu}", body)
        return
    records = run(args)
    _save(args.out, records)
    print(markdown(records))
    if not all(r["correct"] for r in records[1:]):
        raise SystemExit("some layer outputs disagree with torch._grouped_mm beyond tolerance")


if __name__ == "__main__":
    main()
