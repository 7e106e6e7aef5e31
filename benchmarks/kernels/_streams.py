"""Read-only streams: the fastest any layer can read its weights, for the decode rows' reference.

A decode layer must read every touched weight once; `read_designs` are plain kernels that do
only that (read `n` elements, keep a per-program sum so nothing is optimised away), in the
structures that stream well on a GPU: one tile per program over a grid as large as the data (the
shape of an elementwise copy kernel), a few hundred programs looping over long runs, and
`torch.sum`'s reduction.
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
    return designs
