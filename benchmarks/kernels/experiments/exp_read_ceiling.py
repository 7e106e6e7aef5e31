"""Is a read-only stream ever faster than the same-bytes copy here? A hand-written CUDA reader.

    python -m benchmarks.kernels.experiments.exp_read_ceiling [MB ...]

For each size: the bench's copy reference (half the bytes read, half written), `torch.sum`, the
Triton streams of `benchmarks/kernels/_streams.py`, and a CUDA C++ reader compiled with NVRTC
through CuPy (16-byte `ld.global.nc` loads, UNROLL independent loads in flight per thread, a
grid-stride loop over blocks x threads, one atomic per block), over grid sizes and unroll depths.
All timed as bench_moe times a layer: graph replay, L2 flushed, median.
"""

from __future__ import annotations

import sys
from functools import partial

import torch

from benchmarks.kernels._moe_common import measure_ceilings
from benchmarks.kernels._streams import cuda_reader, read_buffer
from benchmarks.kernels._timing import copy_time, graph_time, read_times


def copy_placements(nbytes: float, dev: torch.device) -> None:
    """The copy reference with src and dst at chosen distances inside one allocation."""
    n = int(nbytes) // 4  # bf16 elements per buffer: half the bytes read, half written
    gaps = (0, 4096, 65536, 1 << 20, 2 << 20, 3_100_000, 16 << 20, (64 << 20) + 4096)
    buf = torch.empty(2 * n + (65 << 20), dtype=torch.bfloat16, device=dev).normal_()
    row = []
    for gap in gaps:
        off = n + gap // 2
        src, dst = buf[:n], buf[off : off + n]
        row.append(f"{gap} B: {graph_time(partial(dst.copy_, src), 60) * 1e6:.1f}")
    print(
        f"   copy {nbytes / 1e6:.0f} MB, dst starting this far past src's end, us: "
        + "; ".join(row),
        flush=True,
    )


def main() -> None:
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    sizes = [float(a) for a in sys.argv[1:] if a != "--warm"] or [76, 142, 352, 454, 705, 1233]
    if "--warm" in sys.argv:  # what bench_moe does first: a 1 GB copy and 8192^3 matmuls
        bw, mm = measure_ceilings(dev)
        print(f"ceilings first: copy {bw / 1e12:.2f} TB/s, matmul {mm / 1e12:.0f} TFLOP/s")
    for mb in sizes:
        nbytes = mb * 1e6
        copy = copy_time(nbytes, dev, 60)
        copy_placements(nbytes, dev)
        times = read_times(nbytes, dev, 60)
        src = read_buffer(nbytes, dev)
        for per_sm in (2, 4, 8, 16):
            for threads in (256, 512):
                for unroll in (4, 8):
                    if per_sm * threads > 2048:
                        continue
                    label = f"cuda {per_sm}x{sms} blocks x {threads} thr, unroll {unroll}"
                    try:
                        times[label] = graph_time(
                            cuda_reader(src, per_sm * sms, threads, unroll), 60
                        )
                    except Exception as exc:
                        print(f"  {label}: failed {str(exc).splitlines()[0][:160]}", flush=True)
        best = min(times, key=times.get)
        print(
            f"== {mb:.0f} MB: copy {copy * 1e6:.1f} us; best read {best}: "
            f"{times[best] * 1e6:.1f} us = {100 * copy / times[best]:.0f}% of the copy "
            f"({nbytes / times[best] / 1e12:.2f} TB/s incl. launch)",
            flush=True,
        )
        for k, v in sorted(times.items(), key=lambda kv: kv[1])[:6]:
            print(f"   {v * 1e6:8.1f} us  {k}", flush=True)
        del src
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
