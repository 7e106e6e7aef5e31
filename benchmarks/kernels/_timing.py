"""GPU timing shared by the kernel benchmarks, tuners and experiments: do_bench medians with L2
flushed between calls, CUDA-graph replay (how the layer runs in an engine), and the same-bytes copy
and read-only references the decode rows are measured against."""

from __future__ import annotations

import time
from functools import partial

import torch

from benchmarks.kernels._streams import read_buffer, read_designs

__all__ = ["COPY_GRANULE", "bench", "best_of_rounds", "copy_time", "graph", "graph_time",
           "read_after_time", "read_times"]


def bench(fn, rep_ms: int) -> float:
    import triton.testing

    # At least ~10 timed calls even for 50 ms layers: do_bench's count is rep / estimate.
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    est_ms = (time.perf_counter() - t0) * 1e3
    rep = max(rep_ms, int(10 * est_ms))
    return triton.testing.do_bench(fn, warmup=max(5, rep // 4), rep=rep,
                                   return_mode="median") * 1e-3


def graph(fn):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g


def graph_time(fn, rep_ms: int) -> float:
    """`fn` captured in a CUDA graph and timed by its replays, as the layer is."""
    g = graph(fn)
    t = bench(g.replay, rep_ms)
    g.reset()
    return t


def best_of_rounds(fns: dict, rounds: int, rep_ms: int = 60) -> dict[str, float]:
    """Each callable of `fns` timed by `graph_time` in `rounds` rounds whose order alternates
    (forward, then backward), so that drift over the run hits every variant; the best per name."""
    best = dict.fromkeys(fns, float("inf"))
    for i in range(rounds):
        for k in list(fns) if i % 2 == 0 else list(fns)[::-1]:
            best[k] = min(best[k], graph_time(fns[k], rep_ms))
    return best


COPY_GRANULE = 32768  # bf16 elements = 64 KiB per buffer


def copy_time(nbytes: float, dev: torch.device, rep_ms: int) -> float:
    """A device copy of the layer's floor bytes (half read, half written), timed like a layer:
    what any kernel can reach at this size under this timing (graph launch, ramp, tail).

    Each buffer is rounded up to 64 KiB (< 0.2% more bytes at decode sizes): on the H200 the
    driver's memcpy ran 1.4-1.6x slower for lengths off that grain (experiments/
    exp_copy_reference.py), which made this reference move between rows and runs."""
    n = -(-int(nbytes) // 4 // COPY_GRANULE) * COPY_GRANULE
    src = torch.empty(n, dtype=torch.bfloat16, device=dev).normal_()
    dst = torch.empty_like(src)
    return graph_time(partial(dst.copy_, src), rep_ms)


def read_times(nbytes: float, dev: torch.device, rep_ms: int) -> dict[str, float]:
    """A read-only stream of the floor's bytes in each of `read_designs`, timed like a layer."""
    src = read_buffer(nbytes, dev)
    return {name: graph_time(fn, rep_ms) for name, fn in read_designs(src).items()}


def read_after_time(before, nbytes: float, design: str, dev: torch.device, rep_ms: int) -> float:
    """`before` (the router GEMM), then the read-only stream `design` of the floor's bytes, in one
    graph: the least a layer can take that keeps its router as its own kernel and must stream the
    touched weights after it, as a served model does (the gate is the model's linear layer, run
    before the MoE method; Quorum's vLLM plugin receives its logits)."""
    read = read_designs(read_buffer(nbytes, dev))[design]

    def both() -> None:
        before()
        read()

    return graph_time(both, rep_ms)
