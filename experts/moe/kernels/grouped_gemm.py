"""Grouped GEMMs over expert-sorted rows, plus the combine back to token order.

* `gate_up`: H = silu(X[tok] @ Wg[e].T) * (X[tok] @ Wu[e].T). Token rows are gathered on load
  through `sorted_ids` (no permuted copy of X); gate and up share the A tile.
* `down`:    Y[row] = (H[row] @ W2[e].T) * weight[slot], rows in sorted order.
* `combine`: out[t] = sum_j Y[slot_pos[t*K+j]] over non-null slots (deterministic, fp32 sum).

| tensor       | shape       | dtype           |
|--------------|-------------|-----------------|
| x            | [T, H]      | bf16/fp16/fp32  |
| w13          | [E, 2I, H]  | same as x       |
| w2           | [E, H, I]   | same as x       |
| h            | [P, I]      | same as x       |
| y            | [P, H]      | same as x       |

A GEMM config with `"TMA": true` runs the same GEMMs with descriptor-loaded tiles
(`grouped_gemm_tma`).

Programs whose row block lies past `num_padded` exit at once, so the grid is sized from the
static bound P and nothing waits on the host.
"""

from __future__ import annotations

import torch

from experts.moe.kernels._gemm_common import _interpret, _launch, _pid_to_tile, _precision
from experts.moe.kernels._triton import gdc_launch_dependents, gdc_wait, tl, triton


@triton.jit
def _gate_up_kernel(
    x_ptr, w_ptr, h_ptr, sorted_ids_ptr, block_expert_ptr, num_padded_ptr,
    M, N, K, top_k, num_pid_m, stride_xm, stride_we, stride_wn, stride_hm,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, PDL: tl.constexpr,
):
    if PDL:  # launched before the previous kernel ended: wait for its writes, let the next start
        gdc_wait()
        gdc_launch_dependents()
    pid_m, pid_n = _pid_to_tile(tl.program_id(0), num_pid_m, N, BLOCK_N, GROUP_M)
    if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
        return
    ex = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    sid = tl.load(sorted_ids_ptr + rows)
    tmask = sid < M
    tok = tl.where(tmask, sid // top_k, 0).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    nmask = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = x_ptr + tok[:, None] * stride_xm + offs_k[None, :]  # [BM, BK]
    g_ptrs = w_ptr + ex * stride_we + offs_n[None, :] * stride_wn + offs_k[:, None]  # [BK, BN]
    u_ptrs = g_ptrs + N * stride_wn
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs, mask=tmask[:, None], other=0.0)
            bg = tl.load(g_ptrs, mask=nmask[None, :], other=0.0)
            bu = tl.load(u_ptrs, mask=nmask[None, :], other=0.0)
        else:
            kmask = offs_k < K - k0 * BLOCK_K
            a = tl.load(a_ptrs, mask=tmask[:, None] & kmask[None, :], other=0.0)
            bg = tl.load(g_ptrs, mask=kmask[:, None] & nmask[None, :], other=0.0)
            bu = tl.load(u_ptrs, mask=kmask[:, None] & nmask[None, :], other=0.0)
        if UPCAST:  # the CPU interpreter's bf16/fp16 tl.dot returns garbage (triton 3.9)
            a, bg, bu = a.to(tl.float32), bg.to(tl.float32), bu.to(tl.float32)
        acc_g = tl.dot(a, bg, acc_g, input_precision=PRECISION)
        acc_u = tl.dot(a, bu, acc_u, input_precision=PRECISION)
        a_ptrs += BLOCK_K
        g_ptrs += BLOCK_K
        u_ptrs += BLOCK_K
    h = acc_g / (1.0 + tl.exp(-acc_g)) * acc_u
    h_ptrs = h_ptr + rows[:, None].to(tl.int64) * stride_hm + offs_n[None, :]
    tl.store(h_ptrs, h.to(h_ptr.dtype.element_ty), mask=nmask[None, :])


@triton.jit
def _down_kernel(
    h_ptr, w_ptr, y_ptr, weights_ptr, sorted_ids_ptr, block_expert_ptr, num_padded_ptr,
    M, N, K, num_pid_m, stride_hm, stride_we, stride_wn, stride_ym,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, PDL: tl.constexpr,
):
    if PDL:  # launched before the previous kernel ended: wait for its writes, let the next start
        gdc_wait()
        gdc_launch_dependents()
    pid_m, pid_n = _pid_to_tile(tl.program_id(0), num_pid_m, N, BLOCK_N, GROUP_M)
    if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
        return
    ex = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    if ex < 0:  # an empty block of the layout by slot (`routed_gate_up`)
        return
    _down_gemm(h_ptr, w_ptr, y_ptr, weights_ptr, sorted_ids_ptr, ex, pid_m, pid_n, M, N, K,
               stride_hm, stride_we, stride_wn, stride_ym, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K,
               UPCAST, PRECISION)


@triton.jit
def _down_gemm(
    h_ptr, w_ptr, y_ptr, weights_ptr, sorted_ids_ptr, ex, pid_m, pid_n, M, N, K,
    stride_hm, stride_we, stride_wn, stride_ym,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """Rows of block pid_m (a live block of expert ex) x columns of block pid_n of y, weighted."""
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    sid = tl.load(sorted_ids_ptr + rows)
    tmask = sid < M
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    nmask = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = h_ptr + rows[:, None].to(tl.int64) * stride_hm + offs_k[None, :]  # [BM, BK]
    b_ptrs = w_ptr + ex * stride_we + offs_n[None, :] * stride_wn + offs_k[:, None]  # [BK, BN]
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs, mask=nmask[None, :], other=0.0)
        else:
            kmask = offs_k < K - k0 * BLOCK_K
            a = tl.load(a_ptrs, mask=kmask[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=kmask[:, None] & nmask[None, :], other=0.0)
        if UPCAST:
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    wt = tl.load(weights_ptr + sid, mask=tmask, other=0.0).to(tl.float32)  # [BM]
    y = acc * wt[:, None]
    y_ptrs = y_ptr + rows[:, None].to(tl.int64) * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=tmask[:, None] & nmask[None, :])


@triton.jit
def _combine_kernel(
    y_ptr, slot_pos_ptr, out_ptr, N, stride_ym, stride_om,
    TOP_K: tl.constexpr, K_PAD: tl.constexpr, BLOCK_N: tl.constexpr, PDL: tl.constexpr,
):
    if PDL:
        gdc_wait()
    t = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    kk = tl.arange(0, K_PAD)
    pos = tl.load(slot_pos_ptr + t * TOP_K + kk, mask=kk < TOP_K, other=-1)  # [KP]
    ok = pos >= 0
    rows = tl.where(ok, pos, 0).to(tl.int64)
    vals = tl.load(
        y_ptr + rows[:, None] * stride_ym + offs_n[None, :],
        mask=ok[:, None] & (offs_n < N)[None, :], other=0.0,
    ).to(tl.float32)  # [KP, BN]
    tl.store(out_ptr + t * stride_om + offs_n, tl.sum(vals, axis=0).to(out_ptr.dtype.element_ty),
             mask=offs_n < N)


def gate_up(
    x: torch.Tensor, w13: torch.Tensor, sorted_ids: torch.Tensor, block_expert: torch.Tensor,
    num_padded: torch.Tensor, top_k: int, cfg: dict, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """SwiGLU gate/up grouped GEMM; x [T, H], w13 [E, 2I, H] -> h [P, I] (P = len(sorted_ids))."""
    t, k = x.shape
    n = w13.shape[1] // 2
    p = sorted_ids.numel()
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    h = torch.empty(p, n, dtype=x.dtype, device=x.device) if out is None else out
    if cfg.get("TMA"):
        from experts.moe.kernels.grouped_gemm_tma import gate_up_tma

        return gate_up_tma(x, w13, sorted_ids, block_expert, num_padded, top_k, cfg, h)
    num_pid_m = p // bm
    grid = (num_pid_m * triton.cdiv(n, bn),)
    _gate_up_kernel[grid](
        x, w13, h, sorted_ids, block_expert, num_padded, t * top_k, n, k, top_k, num_pid_m,
        x.stride(0), w13.stride(0), w13.stride(1), h.stride(0),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=cfg["BLOCK_K"], GROUP_M=cfg["GROUP_M"],
        EVEN_K=k % cfg["BLOCK_K"] == 0, UPCAST=_interpret(),
        PRECISION=_precision(x), PDL=bool(cfg.get("PDL")), **_launch(cfg),
    )
    return h


def down(
    h: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor, sorted_ids: torch.Tensor,
    block_expert: torch.Tensor, num_padded: torch.Tensor, cfg: dict,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Down grouped GEMM with the routing weight applied; h [P, I], w2 [E, H, I] -> y [P, H].

    Only rows holding a real slot are written; `combine` reads no other row.
    """
    p, k = h.shape
    n = w2.shape[1]
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    y = torch.empty(p, n, dtype=h.dtype, device=h.device) if out is None else out
    if cfg.get("TMA"):
        from experts.moe.kernels.grouped_gemm_tma import down_tma

        return down_tma(h, w2, topk_weights, sorted_ids, block_expert, num_padded, cfg, y)
    num_pid_m = p // bm
    grid = (num_pid_m * triton.cdiv(n, bn),)
    _down_kernel[grid](
        h, w2, y, topk_weights, sorted_ids, block_expert, num_padded, topk_weights.numel(), n, k,
        num_pid_m, h.stride(0), w2.stride(0), w2.stride(1), y.stride(0),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=cfg["BLOCK_K"], GROUP_M=cfg["GROUP_M"],
        EVEN_K=k % cfg["BLOCK_K"] == 0, UPCAST=_interpret(),
        PRECISION=_precision(h), PDL=bool(cfg.get("PDL")), **_launch(cfg),
    )
    return y


def combine(
    y: torch.Tensor, slot_pos: torch.Tensor, num_tokens: int, top_k: int,
    out: torch.Tensor | None = None, pdl: bool = False,
) -> torch.Tensor:
    """Sum each token's slot rows of y [P, H] back into token order -> [T, H]; nulls add 0.
    `pdl`: launched as a programmatic dependent of the `down` before it (see `_launch`)."""
    n = y.shape[1]
    res = torch.empty(num_tokens, n, dtype=y.dtype, device=y.device) if out is None else out
    block_n = min(1024, triton.next_power_of_2(n))
    if num_tokens:
        _combine_kernel[(num_tokens, triton.cdiv(n, block_n))](
            y, slot_pos, res, n, y.stride(0), res.stride(0),
            TOP_K=top_k, K_PAD=triton.next_power_of_2(top_k), BLOCK_N=block_n, PDL=pdl,
            **_launch({"num_warps": 4, "PDL": pdl}),
        )
    return res
