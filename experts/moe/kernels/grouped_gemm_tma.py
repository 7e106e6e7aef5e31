"""Grouped GEMMs of `grouped_gemm` with the weight tiles (and down's A tile) read through
tensor descriptors: on Hopper the bulk tensor copy engine (TMA) fills shared memory instead of
every thread issuing pointer loads. Chosen per bucket by `"TMA": true` in a GEMM config.

The weights are viewed as one 2-D matrix ([E * 2I, H] for gate/up, [E * H, I] for down), so a
single descriptor built on the host serves every expert: expert e's tile starts at row e * rows.
A tile that runs past its expert's rows reads the next expert's (or zeros past the end); those
output columns are masked on store, so N need not be a multiple of BLOCK_N. Columns past the
reduction size K read as zeros. Token rows of gate/up are gathered through `sorted_ids`, which a
Hopper descriptor cannot do, so x is still read by pointer loads.
"""

from __future__ import annotations

import torch
from triton.tools.tensor_descriptor import TensorDescriptor

from experts.moe.kernels._gemm_common import _interpret, _launch, _pid_to_tile, _precision
from experts.moe.kernels._triton import gdc_launch_dependents, gdc_wait, tl, triton


@triton.jit
def _swiglu_tile_tma(x_ptr, w_desc, ex, rows, row_mask, pid_n, N, K, stride_xm,
                     ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     EVEN_K: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """`_gemm_common._swiglu_tile` with the gate and up tiles of expert ex, columns of block
    pid_n, read through `w_desc` ([E * 2I, H], block [BLOCK_N, BLOCK_K]); x rows by pointer."""
    row_g = ex * 2 * N + pid_n * BLOCK_N  # first row of the gate tile in [E * 2I, H]
    row_u = row_g + N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = x_ptr + rows[:, None].to(tl.int64) * stride_xm + offs_k[None, :]  # [R, BK]
    acc_g = tl.zeros([ROWS, BLOCK_N], tl.float32)
    acc_u = tl.zeros([ROWS, BLOCK_N], tl.float32)
    for k0 in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs, mask=row_mask[:, None], other=0.0)
        else:
            kmask = offs_k < K - k0 * BLOCK_K
            a = tl.load(a_ptrs, mask=row_mask[:, None] & kmask[None, :], other=0.0)
        bg = w_desc.load([row_g, k0 * BLOCK_K]).T  # [BK, BN]
        bu = w_desc.load([row_u, k0 * BLOCK_K]).T
        if UPCAST:  # the CPU interpreter's bf16/fp16 tl.dot returns garbage
            a, bg, bu = a.to(tl.float32), bg.to(tl.float32), bu.to(tl.float32)
        acc_g = tl.dot(a, bg, acc_g, input_precision=PRECISION)
        acc_u = tl.dot(a, bu, acc_u, input_precision=PRECISION)
        a_ptrs += BLOCK_K
    return acc_g / (1.0 + tl.exp(-acc_g)) * acc_u


def gate_up_descriptor(w13: torch.Tensor, cfg: dict) -> TensorDescriptor:
    """The descriptor `_swiglu_tile_tma` reads w13 [E, 2I, H] through, for `cfg`'s tile."""
    e, two_n, k = w13.shape
    return TensorDescriptor.from_tensor(w13.view(e * two_n, k), [cfg["BLOCK_N"], cfg["BLOCK_K"]])


@triton.jit
def _gate_up_tma_kernel(
    x_ptr,
    w_desc,
    h_ptr,
    sorted_ids_ptr,
    block_expert_ptr,
    num_padded_ptr,
    M,
    N,
    K,
    top_k,
    num_pid_m,
    stride_xm,
    stride_hm,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_m, pid_n = _pid_to_tile(tl.program_id(0), num_pid_m, N, BLOCK_N, GROUP_M)
    if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
        return
    ex = tl.load(block_expert_ptr + pid_m)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    sid = tl.load(sorted_ids_ptr + rows)
    tmask = sid < M
    tok = tl.where(tmask, sid // top_k, 0).to(tl.int64)
    h = _swiglu_tile_tma(x_ptr, w_desc, ex, tok, tmask, pid_n, N, K, stride_xm, BLOCK_M, BLOCK_N,
                         BLOCK_K, EVEN_K, UPCAST, PRECISION)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    h_ptrs = h_ptr + rows[:, None].to(tl.int64) * stride_hm + offs_n[None, :]
    tl.store(h_ptrs, h.to(h_ptr.dtype.element_ty), mask=(offs_n < N)[None, :])


@triton.jit
def _down_tma_kernel(
    h_desc,
    w_desc,
    y_ptr,
    weights_ptr,
    sorted_ids_ptr,
    block_expert_ptr,
    num_padded_ptr,
    M,
    N,
    K,
    num_pid_m,
    stride_ym,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    PDL: tl.constexpr = False,
):
    if PDL:  # launched before gate/up ended: wait for h and the layout, let combine start
        gdc_wait()
        gdc_launch_dependents()
    pid_m, pid_n = _pid_to_tile(tl.program_id(0), num_pid_m, N, BLOCK_N, GROUP_M)
    if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
        return
    ex = tl.load(block_expert_ptr + pid_m)
    if ex < 0:  # an empty block of the layout by slot (`routed_gate_up`)
        return
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    sid = tl.load(sorted_ids_ptr + rows)
    tmask = sid < M
    row_w = ex * N + pid_n * BLOCK_N  # first row of the tile in [E * H, I]
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, tl.cdiv(K, BLOCK_K)):
        a = h_desc.load([pid_m * BLOCK_M, k0 * BLOCK_K])  # [BM, BK]
        b = w_desc.load([row_w, k0 * BLOCK_K]).T  # [BK, BN]
        if UPCAST:
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    wt = tl.load(weights_ptr + sid, mask=tmask, other=0.0).to(tl.float32)  # [BM]
    y = acc * wt[:, None]
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    y_ptrs = y_ptr + rows[:, None].to(tl.int64) * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=tmask[:, None] & (offs_n < N)[None, :])


def gate_up_tma(
    x: torch.Tensor,
    w13: torch.Tensor,
    sorted_ids: torch.Tensor,
    block_expert: torch.Tensor,
    num_padded: torch.Tensor,
    top_k: int,
    cfg: dict,
    h: torch.Tensor,
) -> torch.Tensor:
    """`grouped_gemm.gate_up` with the weight tiles read through a tensor descriptor."""
    t, k = x.shape
    two_n = w13.shape[1]
    bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
    w_desc = gate_up_descriptor(w13, cfg)
    num_pid_m = sorted_ids.numel() // bm
    grid = (num_pid_m * triton.cdiv(two_n // 2, bn),)
    _gate_up_tma_kernel[grid](
        x,
        w_desc,
        h,
        sorted_ids,
        block_expert,
        num_padded,
        t * top_k,
        two_n // 2,
        k,
        top_k,
        num_pid_m,
        x.stride(0),
        h.stride(0),
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_K=bk,
        GROUP_M=cfg["GROUP_M"],
        EVEN_K=k % bk == 0,
        UPCAST=_interpret(),
        PRECISION=_precision(x),
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    return h


def down_tma(
    h: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    sorted_ids: torch.Tensor,
    block_expert: torch.Tensor,
    num_padded: torch.Tensor,
    cfg: dict,
    y: torch.Tensor,
) -> torch.Tensor:
    """`grouped_gemm.down` with h and the weight tiles read through tensor descriptors."""
    p, k = h.shape
    e, n, _ = w2.shape
    bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
    h_desc = TensorDescriptor.from_tensor(h, [bm, bk])
    w_desc = TensorDescriptor.from_tensor(w2.view(e * n, k), [bn, bk])
    num_pid_m = p // bm
    _down_tma_kernel[(num_pid_m * triton.cdiv(n, bn),)](
        h_desc,
        w_desc,
        y,
        topk_weights,
        sorted_ids,
        block_expert,
        num_padded,
        topk_weights.numel(),
        n,
        k,
        num_pid_m,
        y.stride(0),
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_K=bk,
        GROUP_M=cfg["GROUP_M"],
        UPCAST=_interpret(),
        PRECISION=_precision(h),
        PDL=bool(cfg.get("PDL")),
        **_launch(cfg),
    )
    return y
