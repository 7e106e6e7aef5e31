"""What the vLLM plugin's wrapper costs: its forward vs the bare layer vs torch._grouped_mm.

    python -m benchmarks.kernels.bench_plugin --out DIR           # on the GPU machine (no vLLM)
    python -m benchmarks.kernels.bench_plugin --results-from DIR/plugin_bench.md   # RESULTS.md

The plugin's forward is `experts.moe.fused.fused_moe_forward(layer, x, router_logits, routing)`,
called exactly as vLLM's runner calls the plugin's `apply_monolithic`: `layer` is a stand-in
with vLLM's RoutedExperts attributes (w13_weight, w2_weight, top_k, renormalize, scoring_func,
...; the same tensors, not copies), `routing` is computed once per layer as the plugin does at
load time. The bare layer is `experts.moe.layer.moe_from_logits` on the same tensors. All three
start from the same router logits (vLLM computes the gate GEMM before the method). bf16.

Both Quorum paths are timed launched eagerly (where any Python overhead of the wrapper shows)
and replayed from a CUDA graph (as vLLM runs decode on a GPU), interleaved (bare, plugin, bare,
plugin) with the better median of each kept; triton.testing.do_bench, L2 flushed between calls.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from benchmarks.kernels._moe_common import SHAPES, fmt_us, grouped_mm_layer, logits_of, make_params
from benchmarks.kernels._timing import bench, graph
from experts.moe.kernels.reference import TOLERANCE, rel_err

PLUGIN_SHAPES = ("mixtral-8x7b", "qwen3-30b-a3b")
TOKENS = (1, 8, 512, 4096)


def vllm_layer(shape, p) -> SimpleNamespace:
    """The attributes of vLLM's RoutedExperts that the plugin reads, on the benchmark's tensors."""
    r = shape.routing
    return SimpleNamespace(
        w13_weight=p.w13, w2_weight=p.w2, top_k=r.top_k, renormalize=r.renormalize,
        scoring_func=r.scoring, use_grouped_topk=r.n_groups > 1,
        num_expert_group=r.n_groups if r.n_groups > 1 else None,
        topk_group=r.topk_groups if r.n_groups > 1 else None,
        routed_scaling_factor=r.routed_scaling, e_score_correction_bias=p.bias,
        custom_routing_function=None, apply_router_weight_on_input=False, expert_map=None,
        moe_config=None,
    )  # fmt: skip


def _pair(bare, plugin, rep: int, rounds: int = 3) -> tuple[float, float]:
    """Best do_bench median of each over `rounds` interleaved rounds (order swapped each round)."""
    times: dict[str, list[float]] = {"bare": [], "plugin": []}
    for i in range(rounds):
        order = (("bare", bare), ("plugin", plugin))
        for key, fn in order if i % 2 == 0 else order[::-1]:
            times[key].append(bench(fn, rep))
    return min(times["bare"]), min(times["plugin"])


def _host_s(bare, plugin, calls: int = 40, rounds: int = 9) -> tuple[float, float]:
    """Host seconds per call, launches only: `calls` calls queue ~300 kernels, fewer than the
    launch queue holds, so the host never waits for the GPU here (the layer never syncs)."""
    times: dict[str, list[float]] = {"bare": [], "plugin": []}
    for i in range(rounds):
        order = (("bare", bare), ("plugin", plugin))
        for key, fn in order if i % 2 == 0 else order[::-1]:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times[key].append((time.perf_counter() - t0) / calls)
            torch.cuda.synchronize()
    return statistics.median(times["bare"]), statistics.median(times["plugin"])


def _row(name: str, shape, p, t: int, rep: int) -> dict:
    from experts.moe.fused import CALLS, fused_moe_forward, routing_config, unsupported_reason
    from experts.moe.layer import moe_from_logits

    layer = vllm_layer(shape, p)
    assert unsupported_reason(layer) is None, unsupported_reason(layer)
    routing = routing_config(layer)  # once per layer, as the plugin does at load time
    assert routing == shape.routing, (routing, shape.routing)
    x = torch.randn(t, shape.h, device=p.w13.device, dtype=torch.bfloat16)
    logits = logits_of(x, shape, p)

    def bare():
        return moe_from_logits(x, logits, p.w13, p.w2, shape.routing, p.bias)

    def plugin():
        return fused_moe_forward(layer, x, logits, routing)

    calls = CALLS.value
    out_plugin, out_bare, again = plugin(), bare(), bare()
    # The decode kernel combines with float atomics: bit-equality holds only where bare does.
    row = dict(shape=name, t=t, same_output=bool(torch.equal(out_plugin, out_bare)),
               bare_deterministic=bool(torch.equal(out_bare, again)),
               rel_err_vs_bare=rel_err(out_plugin, out_bare),
               rel_err_vs_grouped_mm=rel_err(out_plugin, grouped_mm_layer(x, shape, p, logits)),
               counted=CALLS.value - calls)  # fmt: skip
    row["bare_host_s"], row["plugin_host_s"] = _host_s(bare, plugin)
    row["bare_eager_s"], row["plugin_eager_s"] = _pair(bare, plugin, rep)
    g_bare, g_plugin = graph(bare), graph(plugin)
    row["bare_graph_s"], row["plugin_graph_s"] = _pair(g_bare.replay, g_plugin.replay, rep)
    g_bare.reset()
    g_plugin.reset()
    row["grouped_mm_s"] = bench(lambda: grouped_mm_layer(x, shape, p, logits), rep)
    tol = TOLERANCE[torch.bfloat16]
    row["correct"] = (row["counted"] == 1 and row["rel_err_vs_grouped_mm"] < tol
                      and (row["same_output"] or not row["bare_deterministic"])
                      and row["rel_err_vs_bare"] < tol)  # fmt: skip
    return row


def run(args: argparse.Namespace) -> list[dict]:
    dev = torch.device("cuda")
    records: list[dict] = [{"gpu": torch.cuda.get_device_name(dev), "torch": torch.__version__}]
    for name in args.shapes:
        shape = SHAPES[name]
        p = make_params(shape, skewed=False, device=dev)
        for t in args.tokens:
            records.append(_row(name, shape, p, t, args.rep))
            print(json.dumps(records[-1]), flush=True)
        del p
        torch.cuda.empty_cache()
    return records


def markdown(records: list[dict]) -> str:
    head, rows = records[0], records[1:]
    lines = [
        f"GPU: {head['gpu']}; torch {head['torch']}; bf16; uniform routing; times in us "
        "(do_bench medians). plugin = `fused_moe_forward` with vLLM's argument layout; bare = "
        "`moe_from_logits` on the same tensors; ratio = plugin / bare; host = host time per call "
        "(Python + launches, GPU not waited for); eager = launched per call; graph = CUDA-graph "
        "replay. Output: `same` = plugin == bare bit for bit; where the bare layer itself is not "
        "bit-reproducible (decode kernel's atomic combine) the rel. error vs bare; then the rel. "
        "error vs `torch._grouped_mm`.",
        "",
        "| shape | T | host bare | host plugin | +host | bare eager | plugin eager | ratio | "
        "bare graph | plugin graph | ratio | grouped_mm | grouped_mm / plugin graph | output |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ok = "same" if r["same_output"] else f"{r['rel_err_vs_bare']:.1e} vs bare (atomics)"
        if not r["same_output"] and r["bare_deterministic"]:
            ok = "DIFFERENT"
        extra = (r["plugin_host_s"] - r["bare_host_s"]) * 1e6
        lines.append(
            f"| {r['shape']} | {r['t']} | {fmt_us(r['bare_host_s'])} | "
            f"{fmt_us(r['plugin_host_s'])} | {extra:+.1f} | {fmt_us(r['bare_eager_s'])} | "
            f"{fmt_us(r['plugin_eager_s'])} | {r['plugin_eager_s'] / r['bare_eager_s']:.3f} | "
            f"{fmt_us(r['bare_graph_s'])} | {fmt_us(r['plugin_graph_s'])} | "
            f"{r['plugin_graph_s'] / r['bare_graph_s']:.3f} | {fmt_us(r['grouped_mm_s'])} | "
            f"{r['grouped_mm_s'] / r['plugin_graph_s']:.2f}x | {ok}, "
            f"{r['rel_err_vs_grouped_mm']:.1e}{'' if r['correct'] else ' FAIL'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, help="folder for plugin_bench.json / plugin_bench.md")
    ap.add_argument("--shapes", nargs="+", default=list(PLUGIN_SHAPES), choices=list(SHAPES))
    ap.add_argument("--tokens", nargs="+", type=int, default=list(TOKENS))
    ap.add_argument("--rep", type=int, default=100, help="do_bench repetition time, ms")
    ap.add_argument(
        "--results-from",
        type=Path,
        help="write this plugin_bench.md into benchmarks/RESULTS.md and exit",
    )
    args = ap.parse_args(argv)
    if args.results_from:
        from benchmarks._results import write_section

        body = args.results_from.read_text()
        gpu = body.split(";", 1)[0].removeprefix("GPU: ")
        write_section(
            "kernels-plugin",
            "MoE layer through the vLLM plugin's argument layout",
            "python -m benchmarks.kernels.bench_plugin --out DIR",
            f"1x {gpu}",
            body,
        )
        return
    records = run(args)
    md = markdown(records)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "plugin_bench.json").write_text(json.dumps(records, indent=1))
        (args.out / "plugin_bench.md").write_text(md)
    print(md)
    if not all(r["correct"] for r in records[1:]):
        raise SystemExit("the plugin's output differs from the bare layer or torch._grouped_mm")


if __name__ == "__main__":
    main()
