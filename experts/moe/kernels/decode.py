"""Decode path: the whole expert side of the layer in one launch, for a few tokens.

At decode (T <= `MAX_DECODE_TOKENS`) the layer streams the touched experts' weights once and
does almost no arithmetic, so its time is bandwidth plus the gaps between dependent launches.
This kernel removes the gaps: each program

1. routes every token itself from the logits (the same `_route_block` as `routing.route`;
   T x C values, so the redundant work is a few reductions), or reads given (ids, weights);
2. takes one (slot, I-block) pair: the expert of slot `p`, unless an earlier slot has the same
   expert (then the earlier slot's programs do that expert for every token routed to it, so
   each expert's weights are read once);
3. computes h = silu(x Wg[e, Iblk].T) * (x Wu[e, Iblk].T) for all T tokens (x rows padded to
   16 for the tensor cores; tokens not routed to e are masked at the end), then the partial
   down projection h Iblk @ W2[e][:, Iblk].T times the routing weight, added with fp32 atomics
   into a [T, H] accumulator: the combine is the atomic add, no permute, no alignment;
4. counts itself done on an atomic counter; the last program converts the accumulator to the
   output dtype, all T rows at a time.

The accumulator and counter come zeroed from one allocation per call, so nothing persists
between calls and the launch is CUDA-graph capturable (no host synchronisation). fp32 atomics
make the low bits of the sum order-dependent (the result is within the dtype's tolerance of
the reference, not bit-reproducible).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from experts.moe.kernels._gemm_common import _interpret, _precision, _swiglu_step
from experts.moe.kernels._triton import tl, triton
from experts.moe.kernels.reference import RoutingConfig
from experts.moe.kernels.routing import _route_block, local_range, route_meta

MAX_DECODE_TOKENS = 16
_ROWS = 16  # tensor-core tile height: tokens are padded to this many rows
_FINAL_ELEMS = 8192  # accumulator values the last program converts per step


@triton.jit
def _routes(
    logits_ptr, bias_ptr, ids_ptr, wts_ptr, T, C, E_REAL, stride_lt, top_p, scaling, local_lo,
    local_n, ROUTE: tl.constexpr, TOP_K: tl.constexpr, K_PAD: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_C: tl.constexpr, SIGMOID: tl.constexpr, HAS_BIAS: tl.constexpr, RENORM: tl.constexpr,
    N_GROUPS: tl.constexpr, TOPK_GROUPS: tl.constexpr, G_PAD: tl.constexpr,
    GROUP_SIZE: tl.constexpr, MOGE_GROUPS: tl.constexpr, USE_TOP_P: tl.constexpr,
):
    """(rows [BT], karange [KP], ids [BT, KP], weights [BT, KP]) of every token: routed here from
    the logits (`ROUTE`), or the given (ids, weights) read back."""
    if ROUTE:
        rows, karange, ids, w = _route_block(
            logits_ptr, bias_ptr, T, C, E_REAL, stride_lt, top_p, scaling, local_lo, local_n, 0,
            TOP_K, K_PAD, BLOCK_T, BLOCK_C, SIGMOID, HAS_BIAS, RENORM, N_GROUPS, TOPK_GROUPS,
            G_PAD, GROUP_SIZE, MOGE_GROUPS, USE_TOP_P,
        )
    else:
        rows = tl.arange(0, BLOCK_T)
        karange = tl.arange(0, K_PAD)
        m = (rows < T)[:, None] & (karange < TOP_K)[None, :]
        offs = rows[:, None] * TOP_K + karange[None, :]
        ids = tl.load(ids_ptr + offs, mask=m, other=-1)
        w = tl.load(wts_ptr + offs, mask=m, other=0.0).to(tl.float32)
    return rows, karange, ids, w


@triton.jit
def _write_out(acc_ptr, out_ptr, T, H, stride_ot, FINAL_T: tl.constexpr, FINAL_H: tl.constexpr):
    """The fp32 accumulator [T, H] to the output dtype. All T rows at once, FINAL_H columns a
    step: each step waits for its loads, so the fewer steps the shorter this tail (a row at a time
    took T * H / 1024 steps)."""
    offs_t = tl.arange(0, FINAL_T)
    offs_f = tl.arange(0, FINAL_H)
    for n0 in range(0, H, FINAL_H):
        fm = (offs_t < T)[:, None] & (offs_f < H - n0)[None, :]
        v = tl.load(acc_ptr + offs_t[:, None] * H + n0 + offs_f[None, :], mask=fm, other=0.0,
                    cache_modifier=".cg")
        tl.store(out_ptr + offs_t[:, None] * stride_ot + n0 + offs_f[None, :],
                 v.to(out_ptr.dtype.element_ty), mask=fm)


@triton.jit
def _decode_kernel(
    x_ptr,
    logits_ptr,
    bias_ptr,
    ids_ptr,
    wts_ptr,
    w13_ptr,
    w2_ptr,
    acc_ptr,
    count_ptr,
    out_ptr,
    T,
    C,
    E_REAL,
    stride_lt,
    top_p,
    scaling,
    local_lo,
    local_n,
    H,
    I,
    n_iblocks,
    stride_xt,
    stride_w13e,
    stride_w13n,
    stride_w2e,
    stride_w2n,
    stride_ot,
    ROUTE: tl.constexpr,
    TOP_K: tl.constexpr,
    K_PAD: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_C: tl.constexpr,
    SIGMOID: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    RENORM: tl.constexpr,
    N_GROUPS: tl.constexpr,
    TOPK_GROUPS: tl.constexpr,
    G_PAD: tl.constexpr,
    GROUP_SIZE: tl.constexpr,
    MOGE_GROUPS: tl.constexpr,
    USE_TOP_P: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_H: tl.constexpr,
    EVEN_H: tl.constexpr,
    EVEN_I: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    FINAL_T: tl.constexpr,
    FINAL_H: tl.constexpr,
):
    pid = tl.program_id(0)
    p = pid // n_iblocks
    ib = pid % n_iblocks
    rows, karange, ids, w = _routes(
        logits_ptr, bias_ptr, ids_ptr, wts_ptr, T, C, E_REAL, stride_lt, top_p, scaling,
        local_lo, local_n, ROUTE, TOP_K, K_PAD, BLOCK_T, BLOCK_C, SIGMOID, HAS_BIAS, RENORM,
        N_GROUPS, TOPK_GROUPS, G_PAD, GROUP_SIZE, MOGE_GROUPS, USE_TOP_P,
    )
    inr = (rows < T)[:, None] & (karange < TOP_K)[None, :]  # [BT, KP]
    valid = inr & (ids >= 0)
    flat = rows[:, None] * TOP_K + karange[None, :]
    ex = tl.sum(tl.where(inr & (flat == p), ids, 0))  # this slot's expert (-1 when null)
    same = valid & (ids == ex)
    first = tl.sum(tl.where(same & (flat < p), 1, 0)) == 0
    if (ex >= 0) & first:
        routed = tl.sum(same.to(tl.int32), axis=1) > 0  # [BT]
        wt = tl.sum(tl.where(same, w, 0.0), axis=1)  # [BT] this expert's weight per token
        e64 = ex.to(tl.int64)
        offs_i = ib * BLOCK_I + tl.arange(0, BLOCK_I)  # [BI]
        imask = offs_i < I
        offs_k = tl.arange(0, BLOCK_K)
        tmask = rows < T
        a_ptrs = x_ptr + rows[:, None] * stride_xt + offs_k[None, :]  # [BT, BK]
        g_ptrs = w13_ptr + e64 * stride_w13e + offs_i[None, :] * stride_w13n + offs_k[:, None]
        u_ptrs = g_ptrs + I * stride_w13n  # [BK, BI]
        acc_g = tl.zeros([BLOCK_T, BLOCK_I], tl.float32)
        acc_u = tl.zeros([BLOCK_T, BLOCK_I], tl.float32)
        for k0 in range(0, tl.cdiv(H, BLOCK_K)):
            acc_g, acc_u = _swiglu_step(a_ptrs, g_ptrs, u_ptrs, acc_g, acc_u, tmask,
                                        offs_k < H - k0 * BLOCK_K, imask, EVEN_H & EVEN_I, UPCAST,
                                        PRECISION)  # fmt: skip
            a_ptrs += BLOCK_K
            g_ptrs += BLOCK_K
            u_ptrs += BLOCK_K
        # h is rounded to the activation dtype, as the two-GEMM path stores it.
        h = (acc_g / (1.0 + tl.exp(-acc_g)) * acc_u).to(x_ptr.dtype.element_ty)  # [BT, BI]
        if UPCAST:
            h = h.to(tl.float32)
        offs_h = tl.arange(0, BLOCK_H)
        b_ptrs = w2_ptr + e64 * stride_w2e + offs_h[None, :] * stride_w2n + offs_i[:, None]
        acc_rows = acc_ptr + rows[:, None] * H + offs_h[None, :]  # [BT, BH]
        for n0 in range(0, tl.cdiv(H, BLOCK_H)):
            if EVEN_H & EVEN_I:
                b = tl.load(b_ptrs)  # [BI, BH]
                hm = routed[:, None]
            else:
                hmask = offs_h < H - n0 * BLOCK_H
                b = tl.load(b_ptrs, mask=imask[:, None] & hmask[None, :], other=0.0)
                hm = routed[:, None] & hmask[None, :]
            if UPCAST:
                b = b.to(tl.float32)
            y = tl.dot(h, b, input_precision=PRECISION) * wt[:, None]  # [BT, BH]
            tl.atomic_add(acc_rows, y, mask=hm, sem="relaxed")
            b_ptrs += BLOCK_H * stride_w2n
            acc_rows += BLOCK_H
    # Every program (working or not) checks in; the last one writes the output.
    tl.debug_barrier()
    done = tl.atomic_add(count_ptr, 1, sem="acq_rel")
    if done == tl.num_programs(0) - 1:
        _write_out(acc_ptr, out_ptr, T, H, stride_ot, FINAL_T, FINAL_H)


def default_decode_config(interpret: bool) -> dict:
    if interpret:
        return dict(BLOCK_I=16, BLOCK_K=32, BLOCK_H=32, num_warps=4, num_stages=1)
    return dict(BLOCK_I=32, BLOCK_K=128, BLOCK_H=128, num_warps=4, num_stages=3)


class RouteArgs(NamedTuple):
    """What a one-launch decode kernel needs to route (or to read given routes)."""

    route: bool  # route from `logits` in the kernel
    top_k: int
    logits: torch.Tensor  # or any tensor, unused, when not routing
    bias: torch.Tensor  # or `logits`, unused, without a bias
    ids: torch.Tensor  # given routes, or unused
    wts: torch.Tensor
    scalars: tuple  # C, E_REAL, stride_lt, top_p, scaling, local_lo, local_n
    meta: dict  # route_meta's compile-time parameters


def route_args(
    x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, *, logits: torch.Tensor | None = None,
    routing: RoutingConfig | None = None, bias: torch.Tensor | None = None,
    local_experts: tuple[int, int] | None = None, topk_ids: torch.Tensor | None = None,
    topk_weights: torch.Tensor | None = None, name: str = "moe_decode",
) -> RouteArgs:
    """Checks a decode call's arguments (see `moe_decode`) and gathers its routing arguments."""
    t, h = x.shape
    e, two_i, h_w = w13.shape
    inter = two_i // 2
    if not 0 < t <= MAX_DECODE_TOKENS:
        raise ValueError(f"{name} takes 1..{MAX_DECODE_TOKENS} tokens, got {t}")
    if h_w != h or w2.shape != (e, h, inter):
        raise ValueError(
            f"weights {tuple(w13.shape)} / {tuple(w2.shape)} do not fit x {tuple(x.shape)}"
        )
    if logits is not None:
        if routing is None:
            raise ValueError(f"{name}: `logits` needs `routing`")
        c = logits.shape[1]
        routing.validate(c)
        if logits.stride(1) != 1:
            logits = logits.contiguous()
        lo, n = local_range(c, local_experts)
        scalars = (c, c - routing.num_null_experts, logits.stride(0),
                   float(routing.top_p or 1.0), float(routing.routed_scaling), lo, n)  # fmt: skip
        return RouteArgs(True, routing.top_k, logits, bias if bias is not None else logits, x, x,
                         scalars, route_meta(routing, c, bias is not None))  # fmt: skip
    if topk_ids is None or topk_weights is None:
        raise ValueError(f"{name} needs `logits` + `routing` or `topk_ids` + `topk_weights`")
    top_k = topk_ids.shape[1]
    return RouteArgs(False, top_k, x, x, topk_ids.contiguous(), topk_weights.contiguous(),
                     (top_k, e, top_k, 1.0, 1.0, 0, e),
                     route_meta(RoutingConfig(top_k=top_k), top_k, False))  # fmt: skip


def final_meta(t: int, h: int) -> dict:
    """The last program's conversion tile (`_write_out`): all T rows, 8192 values a step."""
    t_pow2 = triton.next_power_of_2(t)
    return dict(FINAL_T=t_pow2, FINAL_H=min(triton.next_power_of_2(h), _FINAL_ELEMS // t_pow2))


def moe_decode(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    *,
    logits: torch.Tensor | None = None,
    routing: RoutingConfig | None = None,
    bias: torch.Tensor | None = None,
    local_experts: tuple[int, int] | None = None,
    topk_ids: torch.Tensor | None = None,
    topk_weights: torch.Tensor | None = None,
    config: dict | None = None,
) -> torch.Tensor:
    """The experts (and, given `logits` + `routing`, the routing) for T <= 16 tokens, one launch.

    Either `logits` [T, C] with `routing` (and optional `bias`, `local_experts` as in
    `routing.route`), or already-routed `topk_ids` [T, K] int32 (-1 = null) with
    `topk_weights` [T, K]. x [T, H], w13 [E, 2I, H], w2 [E, H, I] -> [T, H] in x.dtype.
    """
    r = route_args(x, w13, w2, logits=logits, routing=routing, bias=bias,
                   local_experts=local_experts, topk_ids=topk_ids, topk_weights=topk_weights)
    x = x.contiguous()
    t, h = x.shape
    inter = w2.shape[2]
    cfg = config or default_decode_config(_interpret() or x.device.type != "cuda")
    # One zeroed allocation: the fp32 accumulator [T, H] and the completion counter after it.
    scratch = torch.zeros(t * h + 1, dtype=torch.int32, device=x.device)
    acc = scratch[: t * h].view(torch.float32)
    counter = scratch[t * h :]
    out = torch.empty(t, h, dtype=x.dtype, device=x.device)
    n_ib = triton.cdiv(inter, cfg["BLOCK_I"])
    _decode_kernel[(t * r.top_k * n_ib,)](
        x, r.logits, r.bias, r.ids, r.wts, w13, w2, acc, counter, out, t, *r.scalars, h, inter,
        n_ib, x.stride(0), w13.stride(0), w13.stride(1), w2.stride(0), w2.stride(1),
        out.stride(0), ROUTE=r.route, BLOCK_T=max(_ROWS, triton.next_power_of_2(t)),
        BLOCK_I=cfg["BLOCK_I"], BLOCK_K=cfg["BLOCK_K"], BLOCK_H=cfg["BLOCK_H"],
        EVEN_H=h % cfg["BLOCK_K"] == 0 and h % cfg["BLOCK_H"] == 0,
        EVEN_I=inter % cfg["BLOCK_I"] == 0, UPCAST=_interpret(), PRECISION=_precision(x),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **final_meta(t, h), **r.meta,
    )
    return out
