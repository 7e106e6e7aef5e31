"""Why the bench's same-bytes copy reference moved 1.4-1.6x between runs and rows.

    python -m benchmarks.kernels.experiments.exp_copy_reference --align [BYTES ...]
    python -m benchmarks.kernels.experiments.exp_copy_reference [MB ...] | --reuse | --behind | --engine

`--align` (the answer): the copy of BYTES (half read, half written, as `_timing.copy_time`) with
each buffer rounded up to 1 B (as is), 4 KiB, 64 KiB, 1 MiB, 2 MiB, 16 MiB. The driver's device-to-
device memcpy took a slow path (2.3-2.7 TB/s on the H200, against 3.2-4.2) for buffers that were not a
multiple of 64 KiB (4 KiB was enough at 38 and 96 MB per buffer, not at 356 MB), and at every alignment
for buffers of 1.28 GB and more (NOTES.md, Session 7).

The hypotheses it ruled out first:

A copy's written lines can sit dirty in the L2 (50 MB on the H200) when its timed window closes;
the next call's L2 flush writes them back, outside the window. A read leaves nothing behind. So
per size, each timed as the bench times a layer (graph replay, L2 flushed, median):

- `copy`: the bench's reference (`_timing.copy_time`: half the bytes read, half written);
- `evict`: a read of a separate 256 MB buffer alone, and `copy+evict`: the copy then that read in
  one graph; `copy+evict - evict` is the copy with every written line sent to memory inside the
  window (the read evicts the copy's dirty lines before it ends);
- the same two for the fastest read of the same bytes (`read+evict - evict` against `read`), where
  nothing is written, as a control.

`--reuse`: the copy at 76 MB in fresh allocations, then in blocks the caching allocator carves from a
freed, written 4 GB segment (as inside bench_moe, where the copy runs after the model's weights and
temporaries were allocated), then fresh again, then under `torch.no_grad()` as bench_moe runs it.

`--engine`: the 76 MB copy's time and what its graph replays run (kernel or DMA memcpy), in a fresh
process, after a host-to-device copy, and after the bench's weight fills.

`--behind`: the 76 MB copy and a read with their buffers allocated behind 0-24 GB of live tensors.

Default mode: if the copy's rate with its write-back paid falls to the read's, the copy column flatters decode
targets by the writes it defers.
"""

from __future__ import annotations

import sys
from functools import partial

import torch

from benchmarks.kernels._moe_common import in_order
from benchmarks.kernels._streams import read_buffer, read_designs
from benchmarks.kernels._timing import graph_time

EVICT_BYTES = 256e6



def _copy_us(nbytes: float, dev: torch.device) -> float:
    src = torch.empty(int(nbytes) // 4, dtype=torch.bfloat16, device=dev).normal_()
    dst = torch.empty_like(src)
    return graph_time(partial(dst.copy_, src), 100) * 1e6


def reuse(dev: torch.device) -> None:
    fresh = _copy_us(76e6, dev)
    big = torch.empty(int(4e9) // 2, dtype=torch.bfloat16, device=dev).normal_()
    del big  # kept by the caching allocator: the next buffers are carved from it
    carved = _copy_us(76e6, dev)
    torch.cuda.empty_cache()
    again = _copy_us(76e6, dev)
    with torch.no_grad():  # as bench_moe calls it
        no_grad = _copy_us(76e6, dev)
    print(f"copy 76 MB: fresh {fresh:.1f} us, from a freed 4 GB block {carved:.1f} us, "
          f"fresh again {again:.1f} us, under torch.no_grad {no_grad:.1f} us", flush=True)


def behind(dev: torch.device) -> None:
    """The 76 MB copy (and a read of the same bytes) with its buffers allocated behind G GB of live
    tensors: does the copy's rate depend on where its buffers land?"""
    for gb in (0, 0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24):
        held = [torch.empty(int(1e9) // 2, dtype=torch.bfloat16, device=dev) for _ in range(int(gb))]
        if gb % 1:
            held.append(torch.empty(int(5e8) // 2, dtype=torch.bfloat16, device=dev))
        src = torch.empty(int(76e6) // 4, dtype=torch.bfloat16, device=dev).normal_()
        dst = torch.empty_like(src)
        copy = graph_time(partial(dst.copy_, src), 100) * 1e6
        read = graph_time(read_designs(read_buffer(76e6, dev))["torch.sum"], 100) * 1e6
        print(f"behind {gb:4.1f} GB live: copy {copy:5.1f} us, torch.sum read {read:5.1f} us, "
              f"src at {src.data_ptr() / 2**30:.2f} GiB, dst - src {(dst.data_ptr() - src.data_ptr()) / 2**20:.1f} MiB",
              flush=True)
        del held, src, dst
        torch.cuda.empty_cache()


def _copy_profile(label: str, dev: torch.device) -> None:
    """Time the 76 MB copy graph and name what its replays run (a kernel, or a DMA memcpy)."""
    src = torch.empty(int(76e6) // 4, dtype=torch.bfloat16, device=dev).normal_()
    dst = torch.empty_like(src)
    us = graph_time(partial(dst.copy_, src), 100) * 1e6
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        dst.copy_(src)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            g.replay()
        torch.cuda.synchronize()
    names = {e.key[:60]: round(e.device_time_total / 10, 1) for e in prof.key_averages()
             if e.device_type == torch.autograd.DeviceType.CUDA}
    print(f"{label}: copy {us:.1f} us; replays run {names}", flush=True)


def engine(dev: torch.device) -> None:
    """Does the copy change mode after a host-to-device copy, or after bench-style weight fills?"""
    from benchmarks.kernels._moe_common import SHAPES, make_params

    _copy_profile("fresh process", dev)
    torch.randn(25_000_000).to(dev)
    _copy_profile("after a 100 MB host-to-device copy", dev)
    p = make_params(SHAPES["qwen3-30b-a3b"], False, dev)
    _copy_profile("after make_params(qwen3)", dev)
    del p


GRANULES = (1, 4096, 65536, 1 << 20, 2 << 20, 16 << 20)
ALIGN_DEFAULT = (76_000_000, 76_029_952, 76_030_016, 191_918_080, 712_269_824, 2_560_557_056)


def align(sizes: list[int], dev: torch.device) -> None:
    for nbytes in sizes or ALIGN_DEFAULT:
        base = nbytes // 2  # bytes per buffer
        row = []
        for gran in GRANULES:
            per = -(-base // gran) * gran
            src = torch.empty(per // 2, dtype=torch.bfloat16, device=dev).normal_()
            dst = torch.empty_like(src)
            us = graph_time(partial(dst.copy_, src), 60) * 1e6
            row.append(f"{gran >> 10 or 1} {'KiB' if gran > 1 else 'B'}: {us:.1f} us "
                       f"({2 * per / us / 1e6:.2f} TB/s)")
            del src, dst
            torch.cuda.empty_cache()
        print(f"{nbytes} B, each buffer rounded up to " + "; ".join(row), flush=True)


def main() -> None:
    dev = torch.device("cuda")
    if "--align" in sys.argv:
        align([int(a) for a in sys.argv[1:] if a != "--align"], dev)
        return
    if "--engine" in sys.argv:
        engine(dev)
        return
    if "--reuse" in sys.argv:
        reuse(dev)
        return
    if "--behind" in sys.argv:
        behind(dev)
        return
    sizes = [float(a) for a in sys.argv[1:]] or [76, 142, 352, 705]
    evict_src = read_buffer(EVICT_BYTES, dev)
    evict = read_designs(evict_src)["torch.sum"]
    t_evict = graph_time(evict, 100)
    print(f"evict (torch.sum over {EVICT_BYTES / 1e6:.0f} MB): {t_evict * 1e6:.1f} us", flush=True)
    for mb in sizes:
        nbytes = mb * 1e6
        src = torch.empty(int(nbytes) // 4, dtype=torch.bfloat16, device=dev).normal_()
        dst = torch.empty_like(src)
        copy = partial(dst.copy_, src)
        t_copy = graph_time(copy, 100)
        t_copy_paid = graph_time(partial(in_order, copy, evict), 100) - graph_time(evict, 100)
        buf = read_buffer(nbytes, dev)
        reads = read_designs(buf)
        times = {k: graph_time(fn, 60) for k, fn in reads.items()}
        best = min(times, key=times.get)
        t_read_paid = graph_time(partial(in_order, reads[best], evict), 100) - graph_time(evict, 100)
        print(
            f"{mb:6.0f} MB  copy {t_copy * 1e6:7.1f} us ({nbytes / t_copy / 1e12:.2f} TB/s), "
            f"with write-back {t_copy_paid * 1e6:7.1f} us ({nbytes / t_copy_paid / 1e12:.2f} TB/s); "
            f"read [{best}] {times[best] * 1e6:7.1f} us ({nbytes / times[best] / 1e12:.2f}), "
            f"same subtraction {t_read_paid * 1e6:7.1f} us; "
            f"read % copy {t_copy / times[best]:.1%}, against the paid copy {t_copy_paid / times[best]:.1%}",
            flush=True,
        )
        del src, dst, buf
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
