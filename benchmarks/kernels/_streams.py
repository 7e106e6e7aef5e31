"""Read-only streams: the fastest any layer can read its weights, for the decode rows' reference.

A decode layer must read every touched weight once; `read_designs` are plain kernels that do
only that (read `n` elements, keep a per-program sum so nothing is optimised away), in the
structures that stream well on a GPU: one tile per program over a grid as large as the data (the
shape of an elementwise copy kernel), a few hundred programs looping over long runs,
`torch.sum`'s reduction, and, where CuPy is installed (the GPU machine's image), a CUDA C++
reader compiled with NVRTC: 16-byte read-only loads, UNROLL of them in flight per thread, a
grid-stride loop. On the H200 the CUDA reader was the fastest (NOTES.md, Session 6).
"""

from __future__ import annotations

from functools import partial

import torch
import triton
import triton.language as tl


@triton.jit
def _read_kernel(src, out, n, n_per, R: tl.constexpr, BLOCK: tl.constexpr):
    """Program p sums src[p * n_per : (p + 1) * n_per], R x BLOCK elements per step."""
    pid = tl.program_id(0)
    start = pid.to(tl.int64) * n_per
    offs = tl.arange(0, R)[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]
    acc = tl.zeros([R, BLOCK], tl.float32)
    for i in range(0, n_per, R * BLOCK):
        idx = start + i + offs
        acc += tl.load(src + idx, mask=idx < n, other=0.0).to(tl.float32)
    tl.store(out + pid, tl.sum(acc))


STEP = 16384  # elements; sizes are rounded up to this (see `read_buffer`)


_CUDA_SRC = r"""
extern "C" __global__ void read_stream(const int4* __restrict__ src, long long n_vec,
                                       float* __restrict__ out) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned int acc = 0;
    for (; i + (UNROLL - 1) * stride < n_vec; i += UNROLL * stride) {
        int4 v[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) v[u] = __ldg(src + i + u * stride);
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
    for (; i < n_vec; i += stride) {
        int4 v = __ldg(src + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    __shared__ unsigned int s;
    if (threadIdx.x == 0) s = 0;
    __syncthreads();
    atomicXor(&s, acc);
    __syncthreads();
    if (threadIdx.x == 0) atomicAdd(out, (float)(s & 1));  // keeps every load live
}
"""


def cuda_reader(src: torch.Tensor, blocks: int, threads: int, unroll: int):
    """Zero-argument launcher of the CUDA C++ reader over `src` on torch's current stream."""
    import cupy

    kern = cupy.RawKernel(
        _CUDA_SRC.replace("UNROLL", str(unroll)), "read_stream", options=("--std=c++17",)
    )
    out = torch.zeros(1, dtype=torch.float32, device=src.device)
    n_vec = src.numel() * src.element_size() // 16

    def run() -> None:
        with cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream):
            args = (cupy.uint64(src.data_ptr()), cupy.int64(n_vec), cupy.uint64(out.data_ptr()))
            kern((blocks,), (threads,), args)

    return run


def read_buffer(nbytes: float, device: torch.device) -> torch.Tensor:
    """Random bf16 of `nbytes` rounded up to whole STEPs (< 32 KB more): with a length divisible
    by 16 the kernel's bound check keeps its 16-byte loads (otherwise Triton, unable to prove
    the mask constant over 8 elements, falls back to 2-byte loads: seen in its sm_90 PTX)."""
    n = triton.cdiv(int(nbytes) // 2, STEP) * STEP
    return torch.empty(n, dtype=torch.bfloat16, device=device).normal_()


def read_designs(src: torch.Tensor) -> dict:
    """name -> zero-argument callable that reads all of the 1-D `src` (from `read_buffer`) once."""
    n = src.numel()
    if n % STEP:
        raise ValueError(f"read_designs needs a length divisible by {STEP}, got {n}")
    designs = {"torch.sum": partial(torch.sum, src)}
    # (label, programs or None for one tile each, R, BLOCK, warps)
    for label, programs, r, block, warps in (
        ("tile 8K x 4 warps", None, 1, 8192, 4),
        ("tile 4x4K x 8 warps", None, 4, 4096, 8),
        ("528 programs 8K x 8 warps", 528, 1, 8192, 8),
        ("1056 programs 8K x 8 warps", 1056, 1, 8192, 8),
        ("264 programs 4x4K x 16 warps", 264, 4, 4096, 16),
    ):
        step = r * block
        n_per = step if programs is None else triton.cdiv(triton.cdiv(n, programs), step) * step
        grid = triton.cdiv(n, n_per)
        out = torch.empty(grid, dtype=torch.float32, device=src.device)
        designs[label] = partial(
            _read_kernel[(grid,)], src, out, n, n_per, R=r, BLOCK=block, num_warps=warps
        )
    try:
        import cupy  # noqa: F401 - on the GPU machine's image, not a project dependency
    except ImportError:
        return designs
    sms = torch.cuda.get_device_properties(src.device).multi_processor_count
    for per_sm, threads, unroll in ((8, 256, 8), (4, 512, 4)):
        label = f"cuda {per_sm} blocks/SM x {threads} threads, unroll {unroll}"
        designs[label] = cuda_reader(src, per_sm * sms, threads, unroll)
    return designs
