"""Helpers shared by the grouped GEMM kernels (`grouped_gemm`, `grouped_gemm_tma`, `decode`)."""

from __future__ import annotations

import os

import torch

from experts.moe.kernels._triton import tl, triton


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _pid_to_tile(pid, num_pid_m, N, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    # Grouped order: GROUP_M row blocks share each weight tile while it sits in L2.
    num_pid_n = tl.cdiv(N, BLOCK_N)
    in_group = GROUP_M * num_pid_n
    first_m = (pid // in_group) * GROUP_M
    size_m = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % size_m
    pid_n = (pid % in_group) // size_m
    return pid_m, pid_n


@triton.jit
def _swiglu_step(a_ptrs, g_ptrs, u_ptrs, acc_g, acc_u, row_mask, kmask, nmask,
                 EVEN: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """One K step of the decode kernels' gate/up tiles: x rows [R, BK] (rows under `row_mask`),
    gate and up weight tiles [BK, BN]; with `EVEN` the tiles need no masks. Returns the two
    fp32 accumulators [R, BN]."""
    if EVEN:
        a = tl.load(a_ptrs, mask=row_mask[:, None], other=0.0)
        bg = tl.load(g_ptrs)
        bu = tl.load(u_ptrs)
    else:
        a = tl.load(a_ptrs, mask=row_mask[:, None] & kmask[None, :], other=0.0)
        bg = tl.load(g_ptrs, mask=kmask[:, None] & nmask[None, :], other=0.0)
        bu = tl.load(u_ptrs, mask=kmask[:, None] & nmask[None, :], other=0.0)
    if UPCAST:  # the CPU interpreter's bf16/fp16 tl.dot returns garbage (triton 3.9)
        a, bg, bu = a.to(tl.float32), bg.to(tl.float32), bu.to(tl.float32)
    acc_g = tl.dot(a, bg, acc_g, input_precision=PRECISION)
    acc_u = tl.dot(a, bu, acc_u, input_precision=PRECISION)
    return acc_g, acc_u


def _precision(t: torch.Tensor) -> str:
    # float32 inputs get true fp32 products (the default would round them to tf32).
    return "ieee" if t.dtype == torch.float32 else "tf32"


@triton.jit
def _swiglu_tile(x_ptr, w13_ptr, ex, rows, row_mask, offs_n, nmask, N, K, stride_xm, stride_we,
                 stride_wn, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 EVEN: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """silu(x Wg[ex].T) * (x Wu[ex].T) [ROWS, BLOCK_N] in fp32 for x rows `rows` (those under
    `row_mask`; the others give 0) and the columns `offs_n` of I = N, over the whole K = H."""
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = x_ptr + rows[:, None].to(tl.int64) * stride_xm + offs_k[None, :]  # [R, BK]
    g_ptrs = (w13_ptr + ex.to(tl.int64) * stride_we + offs_n[None, :] * stride_wn
              + offs_k[:, None])  # [BK, BN]  # fmt: skip
    u_ptrs = g_ptrs + N * stride_wn
    acc_g = tl.zeros([ROWS, BLOCK_N], tl.float32)
    acc_u = tl.zeros([ROWS, BLOCK_N], tl.float32)
    for k0 in range(0, tl.cdiv(K, BLOCK_K)):
        acc_g, acc_u = _swiglu_step(a_ptrs, g_ptrs, u_ptrs, acc_g, acc_u, row_mask,
                                    offs_k < K - k0 * BLOCK_K, nmask, EVEN, UPCAST, PRECISION)
        a_ptrs += BLOCK_K
        g_ptrs += BLOCK_K
        u_ptrs += BLOCK_K
    return acc_g / (1.0 + tl.exp(-acc_g)) * acc_u


def _launch(cfg: dict) -> dict:
    """Launch options. With `"PDL": true` the kernel is a programmatic dependent launch (Hopper
    and later): it may start while the kernel before it finishes, and waits for that kernel's
    writes with `gdc_wait` before reading them, so the launch gap overlaps the previous tail."""
    opts = {k: cfg[k] for k in ("num_warps", "num_stages") if k in cfg}
    if cfg.get("PDL"):
        opts["launch_pdl"] = True
    return opts
