"""Staged decode path: the expert side of the layer in one launch, in two stages of work items.

The one-launch decode kernel (`decode`) gives each program one (expert, I-block) and does both
its gate/up and its share of the down projection, reading W2 as BLOCK_I-wide column strips.
Here one launch holds work items of three kinds, taken in the order of an atomic ticket:

1. ticket 0 routes every token and writes, per slot, its expert (-1 when the slot is null or
   an earlier slot has the same expert) and that expert's weight for each token, then raises a
   flag; every other item waits for the flag;
2. gate/up items, one per (slot, BLOCK_N rows of I): h = silu(x Wg.T) * (x Wu.T) for all T
   tokens into a [slots, T, I] workspace (rounded to the activation dtype, as the two-GEMM
   path stores it); each then counts itself done on its slot;
3. down items, one per (slot, BLOCK_H rows of H): wait until every gate/up item of the slot is
   done, then y = h @ W2[e][Hblk, :].T (whole W2 rows, as `grouped_gemm.down` reads them) times
   each token's routing weight, added with fp32 atomics into a [T, H] accumulator;
4. the last item to check in converts the accumulator to the output (`decode._write_out`).

Tickets, not program ids, order the work, so an item only waits on items whose tickets came
earlier: those are running or done, and the launch cannot deadlock whatever order the GPU
starts its programs in. The accumulator and counters come zeroed from one allocation per call
(CUDA-graph capturable, no host synchronisation); the fp32 atomics make the low bits
order-dependent, as in `decode`. A decode config entry selects this path with "STAGED": true.
"""

from __future__ import annotations

import torch

from experts.moe.kernels._gemm_common import _interpret, _precision, _swiglu_tile
from experts.moe.kernels._triton import tl, triton
from experts.moe.kernels.decode import _ROWS, _routes, _write_out, final_meta, route_args
from experts.moe.kernels.reference import RoutingConfig


@triton.jit
def _publish_slots(rows, karange, ids, w, slot_ex_ptr, slot_wt_ptr, T,
                   TOP_K: tl.constexpr, K_PAD: tl.constexpr, ROWS: tl.constexpr):  # fmt: skip
    """Per slot p = t * TOP_K + j: its expert, or -1 when null or an earlier slot has the same
    expert (whose items then serve every token routed to it); and [ROWS] that expert's weight
    for each token (0 where the token is not routed to it)."""
    inr = (rows < T)[:, None] & (karange < TOP_K)[None, :]  # [BT, KP]
    valid = inr & (ids >= 0)
    earlier_same = tl.zeros(ids.shape, tl.int32)
    wt = tl.zeros([ids.shape[0], K_PAD, ids.shape[0]], tl.float32)  # [slot t, slot j, token]
    for jj in tl.static_range(K_PAD):
        pick = karange[None, :] == jj
        col_ids = tl.sum(tl.where(pick, ids, 0), axis=1)  # [BT]: ids[:, jj]
        col_w = tl.sum(tl.where(pick, w, 0.0), axis=1)
        col_ok = tl.sum(tl.where(pick & valid, 1, 0), axis=1) > 0
        match = (ids[:, :, None] == col_ids[None, None, :]) & valid[:, :, None] & col_ok[None, None, :]
        earlier = (rows[None, None, :] < rows[:, None, None]) | (
            (rows[None, None, :] == rows[:, None, None]) & (jj < karange)[None, :, None]
        )
        earlier_same += tl.sum((match & earlier).to(tl.int32), axis=2)
        wt += tl.where(match, col_w[None, None, :], 0.0)
    slot = rows[:, None] * TOP_K + karange[None, :]
    tl.store(slot_ex_ptr + slot, tl.where(valid & (earlier_same == 0), ids, -1), mask=inr)
    tok = rows[None, None, :]
    tl.store(slot_wt_ptr + slot[:, :, None] * ROWS + tok, wt, mask=inr[:, :, None] & (tok < T))


@triton.jit
def _gate_up_item(
    x_ptr, w13_ptr, h_ptr, slot_ex_ptr, ready_ptr, item, T, H, I, n_nb, stride_xt, stride_w13e,
    stride_w13n, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    EVEN: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """h[p, :, Nblk] = silu(x Wg.T) * (x Wu.T) for every token; then slot p counts one more."""
    p = item // n_nb
    ex = tl.load(slot_ex_ptr + p, cache_modifier=".cg")
    if ex >= 0:
        rows = tl.arange(0, ROWS)
        tmask = rows < T
        offs_n = (item % n_nb) * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = offs_n < I
        h = _swiglu_tile(x_ptr, w13_ptr, ex, rows, tmask, offs_n, nmask, I, H, stride_xt,
                         stride_w13e, stride_w13n, ROWS, BLOCK_N, BLOCK_K, EVEN, UPCAST,
                         PRECISION)  # fmt: skip
        h_ptrs = h_ptr + (p * T + rows[:, None]).to(tl.int64) * I + offs_n[None, :]
        tl.store(h_ptrs, h.to(h_ptr.dtype.element_ty), mask=tmask[:, None] & nmask[None, :])
    tl.debug_barrier()  # every thread's stores before the release
    tl.atomic_add(ready_ptr + p, 1, sem="release")


@triton.jit
def _down_item(
    w2_ptr, h_ptr, acc_ptr, slot_ex_ptr, slot_wt_ptr, ready_ptr, item, T, H, I, n_nb, n_hb,
    stride_w2e, stride_w2n, ROWS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_KD: tl.constexpr,
    EVEN: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """acc[:, Hblk] += (h[p] @ W2[e][Hblk, :].T) * weight, once every gate/up item of p is done."""
    p = item // n_hb
    ex = tl.load(slot_ex_ptr + p, cache_modifier=".cg")
    if ex >= 0:
        while tl.atomic_add(ready_ptr + p, 0, sem="acquire") < n_nb:
            pass
        rows = tl.arange(0, ROWS)
        tmask = rows < T
        offs_h = (item % n_hb) * BLOCK_H + tl.arange(0, BLOCK_H)
        hmask = offs_h < H
        offs_k = tl.arange(0, BLOCK_KD)
        a_ptrs = h_ptr + (p * T + rows[:, None]).to(tl.int64) * I + offs_k[None, :]  # [R, BKD]
        b_ptrs = (w2_ptr + ex.to(tl.int64) * stride_w2e + offs_h[None, :] * stride_w2n
                  + offs_k[:, None])  # [BKD, BH]  # fmt: skip
        acc = tl.zeros([ROWS, BLOCK_H], tl.float32)
        for k0 in range(0, tl.cdiv(I, BLOCK_KD)):
            if EVEN:
                a = tl.load(a_ptrs, mask=tmask[:, None], other=0.0, cache_modifier=".cg")
                b = tl.load(b_ptrs)
            else:
                kmask = offs_k < I - k0 * BLOCK_KD
                a = tl.load(a_ptrs, mask=tmask[:, None] & kmask[None, :], other=0.0,
                            cache_modifier=".cg")
                b = tl.load(b_ptrs, mask=kmask[:, None] & hmask[None, :], other=0.0)
            if UPCAST:
                a, b = a.to(tl.float32), b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
            a_ptrs += BLOCK_KD
            b_ptrs += BLOCK_KD
        wt = tl.load(slot_wt_ptr + p * ROWS + rows, mask=tmask, other=0.0, cache_modifier=".cg")
        tl.atomic_add(acc_ptr + rows[:, None] * H + offs_h[None, :], acc * wt[:, None],
                      mask=(wt != 0.0)[:, None] & hmask[None, :], sem="relaxed")


@triton.jit
def _staged_kernel(
    x_ptr, logits_ptr, bias_ptr, ids_ptr, wts_ptr, w13_ptr, w2_ptr, h_ptr, acc_ptr,
    slot_ex_ptr, slot_wt_ptr, ready_ptr, sync_ptr, out_ptr,
    T, C, E_REAL, stride_lt, top_p, scaling, local_lo, local_n,
    H, I, n_gate_up, n_nb, n_hb, stride_xt, stride_w13e, stride_w13n, stride_w2e, stride_w2n,
    stride_ot,
    ROUTE: tl.constexpr, TOP_K: tl.constexpr, K_PAD: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_C: tl.constexpr, SIGMOID: tl.constexpr, HAS_BIAS: tl.constexpr, RENORM: tl.constexpr,
    N_GROUPS: tl.constexpr, TOPK_GROUPS: tl.constexpr, G_PAD: tl.constexpr,
    GROUP_SIZE: tl.constexpr, MOGE_GROUPS: tl.constexpr, USE_TOP_P: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_KD: tl.constexpr, EVEN_GATE_UP: tl.constexpr, EVEN_DOWN: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, FINAL_T: tl.constexpr, FINAL_H: tl.constexpr,
):
    # sync: [0] the ticket, [1] the routed flag, [2] items checked in
    ticket = tl.atomic_add(sync_ptr, 1, sem="relaxed")
    if ticket == 0:
        rows, karange, ids, w = _routes(
            logits_ptr, bias_ptr, ids_ptr, wts_ptr, T, C, E_REAL, stride_lt, top_p, scaling,
            local_lo, local_n, ROUTE, TOP_K, K_PAD, BLOCK_T, BLOCK_C, SIGMOID, HAS_BIAS, RENORM,
            N_GROUPS, TOPK_GROUPS, G_PAD, GROUP_SIZE, MOGE_GROUPS, USE_TOP_P,
        )
        _publish_slots(rows, karange, ids, w, slot_ex_ptr, slot_wt_ptr, T, TOP_K, K_PAD, ROWS)
        tl.debug_barrier()
        tl.atomic_xchg(sync_ptr + 1, 1, sem="release")
    else:
        while tl.atomic_add(sync_ptr + 1, 0, sem="acquire") == 0:
            pass
        if ticket - 1 < n_gate_up:
            _gate_up_item(x_ptr, w13_ptr, h_ptr, slot_ex_ptr, ready_ptr, ticket - 1, T, H, I, n_nb,
                          stride_xt, stride_w13e, stride_w13n, ROWS, BLOCK_N, BLOCK_K,
                          EVEN_GATE_UP, UPCAST, PRECISION)  # fmt: skip
        else:
            _down_item(w2_ptr, h_ptr, acc_ptr, slot_ex_ptr, slot_wt_ptr, ready_ptr,
                       ticket - 1 - n_gate_up, T, H, I, n_nb, n_hb, stride_w2e, stride_w2n, ROWS,
                       BLOCK_H, BLOCK_KD, EVEN_DOWN, UPCAST, PRECISION)  # fmt: skip
    # Every item checks in; the last one writes the output.
    tl.debug_barrier()
    done = tl.atomic_add(sync_ptr + 2, 1, sem="acq_rel")
    if done == tl.num_programs(0) - 1:
        _write_out(acc_ptr, out_ptr, T, H, stride_ot, FINAL_T, FINAL_H)


def default_staged_config(interpret: bool) -> dict:
    if interpret:
        return dict(STAGED=True, BLOCK_N=16, BLOCK_K=32, BLOCK_H=16, BLOCK_KD=32, num_warps=4,
                    num_stages=1)  # fmt: skip
    # The tiles of the tuned H200 gate_up / down entries at qwen3-30b-a3b T=8; 60 KB of shared
    # memory (Triton 3.6, sm_90), so three programs fit an SM.
    return dict(STAGED=True, BLOCK_N=32, BLOCK_K=128, BLOCK_H=64, BLOCK_KD=128, num_warps=4,
                num_stages=4)  # fmt: skip


def moe_staged(
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
    """The same function and arguments as `decode.moe_decode`, run as staged work items."""
    r = route_args(x, w13, w2, logits=logits, routing=routing, bias=bias,
                   local_experts=local_experts, topk_ids=topk_ids, topk_weights=topk_weights,
                   name="moe_staged")  # fmt: skip
    x = x.contiguous()
    t, h = x.shape
    inter = w2.shape[2]
    cfg = config or default_staged_config(_interpret() or x.device.type != "cuda")
    n_slots = t * r.top_k
    n_nb = triton.cdiv(inter, cfg["BLOCK_N"])
    n_hb = triton.cdiv(h, cfg["BLOCK_H"])
    dev = x.device
    # One zeroed allocation: the fp32 accumulator [T, H], a done count per slot, the ticket, the
    # routed flag and the check-in count. The rest is written before it is read.
    scratch = torch.zeros(t * h + n_slots + 3, dtype=torch.int32, device=dev)
    acc = scratch[: t * h].view(torch.float32)
    ready, sync = scratch[t * h : t * h + n_slots], scratch[t * h + n_slots :]
    slot_ex = torch.empty(n_slots, dtype=torch.int32, device=dev)
    slot_wt = torch.empty(n_slots, _ROWS, dtype=torch.float32, device=dev)
    hbuf = torch.empty(n_slots, t, inter, dtype=x.dtype, device=dev)
    out = torch.empty(t, h, dtype=x.dtype, device=dev)
    _staged_kernel[(1 + n_slots * (n_nb + n_hb),)](
        x, r.logits, r.bias, r.ids, r.wts, w13, w2, hbuf, acc, slot_ex, slot_wt, ready, sync, out,
        t, *r.scalars, h, inter, n_slots * n_nb, n_nb, n_hb, x.stride(0), w13.stride(0),
        w13.stride(1), w2.stride(0), w2.stride(1), out.stride(0),
        ROUTE=r.route, BLOCK_T=triton.next_power_of_2(t), ROWS=_ROWS, BLOCK_N=cfg["BLOCK_N"],
        BLOCK_K=cfg["BLOCK_K"], BLOCK_H=cfg["BLOCK_H"], BLOCK_KD=cfg["BLOCK_KD"],
        EVEN_GATE_UP=h % cfg["BLOCK_K"] == 0 and inter % cfg["BLOCK_N"] == 0,
        EVEN_DOWN=inter % cfg["BLOCK_KD"] == 0 and h % cfg["BLOCK_H"] == 0,
        UPCAST=_interpret(), PRECISION=_precision(x), num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"], **final_meta(t, h), **r.meta,
        # a register cap: the routing item needs many registers, every other item far fewer, and
        # the kernel's count (its largest) decides how many programs share an SM
        **({"maxnreg": cfg["maxnreg"]} if cfg.get("maxnreg") else {}),
    )
    return out
