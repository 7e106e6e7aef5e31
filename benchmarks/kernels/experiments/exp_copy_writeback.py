"""Does the copy reference finish before its writes reach memory? The copy with its write-back paid.

    python -m benchmarks.kernels.experiments.exp_copy_writeback [MB ...] | --reuse | --behind

A copy's written lines can sit dirty in the L2 (50 MB on the H200) when its timed window closes;
the next call's L2 flush writes them back, outside the window. A read leaves nothing behind. So
per size, each timed as the bench times a layer (graph replay, L2 flushed, median):

- `copy`: the bench's reference (`bench_moe._copy_time`: half the bytes read, half written);
- `evict`: a read of a separate 256 MB buffer alone, and `copy+evict`: the copy then that read in
  one graph; `copy+evict - evict` is the copy with every written line sent to memory inside the
  window (the read evicts the copy's dirty lines before it ends);
- the same two for the fastest read of the same bytes (`read+evict - evict` against `read`), where
  nothing is written, as a control.

`--reuse`: the copy at 76 MB in fresh allocations, then in blocks the caching allocator carves from a
freed, written 4 GB segment (as inside bench_moe, where the copy runs after the model's weights and
temporaries were allocated), then fresh again, then under `torch.no_grad()` as bench_moe runs it.

`--behind`: the 76 MB copy and a read with their buffers allocated behind 0-24 GB of live tensors.

If the copy's rate with its write-back paid falls to the read's, the copy column flatters decode
targets by the writes it defers.
"""

from __future__ import annotations

import sys
from functools import partial

import torch

from benchmarks.kernels._streams import read_buffer, read_designs
from benchmarks.kernels.bench_moe import _graph_time

EVICT_BYTES = 256e6


def _then(first, second) -> None:
    first()
    second()


def _copy_us(nbytes: float, dev: torch.device) -> float:
    src = torch.empty(int(nbytes) // 4, dtype=torch.bfloat16, device=dev).normal_()
    dst = torch.empty_like(src)
    return _graph_time(partial(dst.copy_, src), 100) * 1e6


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
        copy = _graph_time(partial(dst.copy_, src), 100) * 1e6
        read = _graph_time(read_designs(read_buffer(76e6, dev))["torch.sum"], 100) * 1e6
        print(f"behind {gb:4.1f} GB live: copy {copy:5.1f} us, torch.sum read {read:5.1f} us, "
              f"src at {src.data_ptr() / 2**30:.2f} GiB, dst - src {(dst.data_ptr() - src.data_ptr()) / 2**20:.1f} MiB",
              flush=True)
        del held, src, dst
        torch.cuda.empty_cache()


def main() -> None:
    dev = torch.device("cuda")
    if "--reuse" in sys.argv:
        reuse(dev)
        return
    if "--behind" in sys.argv:
        behind(dev)
        return
    sizes = [float(a) for a in sys.argv[1:]] or [76, 142, 352, 705]
    evict_src = read_buffer(EVICT_BYTES, dev)
    evict = read_designs(evict_src)["torch.sum"]
    t_evict = _graph_time(evict, 100)
    print(f"evict (torch.sum over {EVICT_BYTES / 1e6:.0f} MB): {t_evict * 1e6:.1f} us", flush=True)
    for mb in sizes:
        nbytes = mb * 1e6
        src = torch.empty(int(nbytes) // 4, dtype=torch.bfloat16, device=dev).normal_()
        dst = torch.empty_like(src)
        copy = partial(dst.copy_, src)
        t_copy = _graph_time(copy, 100)
        t_copy_paid = _graph_time(partial(_then, copy, evict), 100) - _graph_time(evict, 100)
        buf = read_buffer(nbytes, dev)
        reads = read_designs(buf)
        times = {k: _graph_time(fn, 60) for k, fn in reads.items()}
        best = min(times, key=times.get)
        t_read_paid = _graph_time(partial(_then, reads[best], evict), 100) - _graph_time(evict, 100)
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
