"""Decode path: the gate/up grouped GEMM routes its own tokens, so no route_align launch is needed.

At decode the aligned path is router GEMM -> route_align (one program) -> gate_up -> down ->
combine, and route_align is a single dependent step of several microseconds between the router
and the first weight byte (NOTES.md, Session 13). Here every gate/up program routes all T tokens
itself from the logits (`routing._route_block`, T x C values) and lays out one block per slot:

* block p belongs to slot p (p = t * K + j) when p is the first slot with its expert; its rows
  are the tokens (row r = token r), masked to those routed to that expert, so each expert's
  weights are read once however many tokens chose it. Other blocks are empty (expert -1);
* the programs of block p with pid_n == 0 write the layout `down` and `combine` read: the block's
  expert and its rows' slot ids (`sorted_ids`, padding rows M), slot p's routing weight and its
  row (`slot_pos`), and the padded total;
* the block's programs then compute h = silu(x Wg[e].T) * (x Wu[e].T) for their BLOCK_N columns.

With `"RANKED": true` in the gate/up entry and plain top-k routing (no groups, no top-p), a
program routes by counting instead (`_route_slot`): the place of each column in its slot's
token's order names the slot's expert, and each token's place for that expert says whether it
chose it; that is about five dependent reductions instead of K arg-max rounds, and the routing
weight is computed only by the programs that write it. Without a bias it orders the logits, not
their softmax: the same order but for ties the softmax's rounding makes between distinct logits.

`down` (which skips empty blocks) and `combine` then run unchanged. The outputs are those of
`route_align` + `gate_up` laid out by slot instead of by expert. A layer config selects this with
`"ROUTE_IN_GEMM": true` (written by `benchmarks/kernels/tune_flags.py` only where measured
faster); it needs T <= BLOCK_M. With `"TMA": true` in the gate/up entry the weight tiles come
through a tensor descriptor (`grouped_gemm_tma`), and `down` may take a TMA entry too.
"""

from __future__ import annotations

import torch

from experts.moe.kernels._gemm_common import (
    _interpret,
    _launch,
    _pid_to_tile,
    _precision,
    _swiglu_tile,
)
from experts.moe.kernels._triton import gdc_launch_dependents, gdc_wait, tl, triton
from experts.moe.kernels.grouped_gemm_tma import _swiglu_tile_tma, gate_up_descriptor
from experts.moe.kernels.reference import RoutingConfig
from experts.moe.kernels.routing import (
    _logit_rows,
    _route_block,
    _scores,
    local_range,
    route_meta,
)


@triton.jit
def _write_block_layout(
    p, rows, w, inr, flat, ex, same, lead, M, wts_ptr, sorted_ids_ptr, block_expert_ptr,
    num_padded_ptr, slot_pos_ptr, BLOCK_M: tl.constexpr, TOP_K: tl.constexpr,
):
    """Slot p's entries of the layout (see the module docstring); `rows` [BT] are the tokens."""
    first = tl.min(tl.where(same, flat, M))  # the first slot with slot p's expert
    tl.store(wts_ptr + p, tl.sum(tl.where(inr & (flat == p), w, 0.0)))
    tl.store(slot_pos_ptr + p, tl.where(ex >= 0, first * BLOCK_M + p // TOP_K, -1))
    tl.store(block_expert_ptr + p, tl.where(lead, ex, -1))
    r = tl.arange(0, BLOCK_M)
    on_row = r[:, None] == rows[None, :]  # [BM, BT]
    sid_t = tl.sum(tl.where(same, flat, 0), axis=1)  # [BT]: each token's slot with this expert
    has_t = tl.sum(same.to(tl.int32), axis=1)  # [BT]: 1 where routed to it, else 0
    sid = tl.sum(tl.where(on_row, sid_t[None, :], 0), axis=1)  # [BM]
    has = tl.sum(tl.where(on_row, has_t[None, :], 0), axis=1) > 0
    tl.store(sorted_ids_ptr + p * BLOCK_M + r, tl.where(lead & has, sid, M))
    if p == 0:
        tl.store(num_padded_ptr, M * BLOCK_M)  # one block per slot


@triton.jit
def _selection(logits_ptr, bias_ptr, rows, cols, rmask, cmask, stride_lt,
               SIGMOID: tl.constexpr, HAS_BIAS: tl.constexpr):  # fmt: skip
    """Selection scores [R, BC] of the logit rows `rows` (those under `rmask`; the others 0),
    -inf past C. Without a bias the logits themselves: they order the columns as their softmax or
    sigmoid does."""
    s = _logit_rows(logits_ptr, rows, cols, rmask, cmask, stride_lt)
    if HAS_BIAS:
        s = _scores(s, cmask, SIGMOID) + tl.load(bias_ptr + cols, mask=cmask,
                                                 other=0.0).to(tl.float32)[None, :]
    return tl.where(cmask[None, :], s, -float("inf"))


@triton.jit
def _route_slot(
    logits_ptr, bias_ptr, p, T, C, E_REAL, stride_lt, local_lo, local_n,
    TOP_K: tl.constexpr, K_PAD: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
    SIGMOID: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    """Plain top-k routing (no groups, no top-p) of what slot p's programs need, by counting
    instead of K arg-max rounds: the place of each column in token t = p // K's order gives slot
    p's column, and each token's place for that column tells whether (and in which slot) it chose
    it. A column's place is the number of columns that beat it (a higher selection score, or an
    equal one and a lower index: the order the iterated arg-max of `routing._route_block` picks
    them in). Returns the [BT, KP] tiles `_write_block_layout` takes (all but the weights), slot p's
    expert and lead, and token t's places and column for `_slot_weight`."""
    rows = tl.arange(0, BLOCK_T)  # [BT]
    cols = tl.arange(0, BLOCK_C)  # [BC]
    rmask = rows < T
    cmask = cols < C
    t = p // TOP_K
    choice = _selection(logits_ptr, bias_ptr, rows, cols, rmask, cmask, stride_lt, SIGMOID,
                        HAS_BIAS)  # [BT, BC]
    one = tl.arange(0, 1)
    ct = _selection(logits_ptr, bias_ptr, t + one, cols, one == 0, cmask, stride_lt, SIGMOID,
                    HAS_BIAS)  # [1, BC]: token t's row, loaded beside the others
    ct = tl.reshape(ct, [BLOCK_C])
    beats = (ct[:, None] > ct[None, :]) | (
        (ct[:, None] == ct[None, :]) & (cols[:, None] < cols[None, :]))  # [BC, BC]: a beats b
    place_t = tl.sum(beats.to(tl.int32), axis=0)  # [BC]
    col = tl.sum(tl.where(place_t == p % TOP_K, cols, 0))  # slot p's column
    v = tl.sum(tl.where(cols[None, :] == col, choice, 0.0), axis=1)  # [BT]: each token's score
    place = tl.sum(((choice > v[:, None]) | ((choice == v[:, None]) & (cols[None, :] < col)))
                   .to(tl.int32), axis=1)  # [BT]: that column's place in each token's order
    ok = (col < E_REAL) & (col >= local_lo) & (col < local_lo + local_n)  # not null, this shard
    routed = rmask & (place < TOP_K) & ok  # [BT]: the tokens that chose it
    lead = ok & (tl.sum((routed & (rows < t)).to(tl.int32)) == 0)
    karange = tl.arange(0, K_PAD)
    flat = rows[:, None] * TOP_K + karange[None, :]  # [BT, KP]
    inr = rmask[:, None] & (karange < TOP_K)[None, :]
    same = routed[:, None] & (karange[None, :] == place[:, None])
    return rows, inr, flat, tl.where(ok, col - local_lo, -1), same, lead, place_t, col


@triton.jit
def _slot_weight(
    logits_ptr, p, place_t, col, C, stride_lt, scaling, TOP_K: tl.constexpr,
    BLOCK_C: tl.constexpr, SIGMOID: tl.constexpr, RENORM: tl.constexpr,
):
    """Slot p's routing weight (before the null / shard mask) from token p // K's logits and the
    places `_route_slot` gave its columns; renormalised over all K slots, as the reference."""
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    one = tl.arange(0, 1)
    sc = tl.reshape(_scores(_logit_rows(logits_ptr, p // TOP_K + one, cols, one == 0, cmask,
                                        stride_lt), cmask, SIGMOID), [BLOCK_C])
    w = tl.sum(tl.where(cols == col, sc, 0.0))
    if RENORM:
        w = w / (tl.sum(tl.where(place_t < TOP_K, sc, 0.0)) + 1e-20)
    return w * scaling


@triton.jit
def _gate_up_routed_kernel(
    x_ptr, w_ptr, h_ptr, logits_ptr, bias_ptr, wts_ptr, sorted_ids_ptr, block_expert_ptr,
    num_padded_ptr, slot_pos_ptr, T, C, E_REAL, stride_lt, top_p, scaling, local_lo, local_n,
    N, K, stride_xm, stride_we, stride_wn, stride_hm,
    TOP_K: tl.constexpr, K_PAD: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
    SIGMOID: tl.constexpr, HAS_BIAS: tl.constexpr, RENORM: tl.constexpr,
    N_GROUPS: tl.constexpr, TOPK_GROUPS: tl.constexpr, G_PAD: tl.constexpr,
    GROUP_SIZE: tl.constexpr, MOGE_GROUPS: tl.constexpr, USE_TOP_P: tl.constexpr,
    RANKED: tl.constexpr, TMA: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, PDL: tl.constexpr,
):
    if PDL:  # launched before the router GEMM ended: wait for the logits, let `down` start
        gdc_wait()
        gdc_launch_dependents()
    M = T * TOP_K
    p, pid_n = _pid_to_tile(tl.program_id(0), M, N, BLOCK_N, GROUP_M)
    if RANKED:
        rows, inr, flat, ex, same, lead, place_t, col = _route_slot(
            logits_ptr, bias_ptr, p, T, C, E_REAL, stride_lt, local_lo, local_n,
            TOP_K, K_PAD, BLOCK_T, BLOCK_C, SIGMOID, HAS_BIAS,
        )
        w = tl.zeros([BLOCK_T, K_PAD], tl.float32)  # slot p's weight: pid_n == 0 only
    else:
        rows, karange, ids, w = _route_block(
            logits_ptr, bias_ptr, T, C, E_REAL, stride_lt, top_p, scaling, local_lo, local_n, 0,
            TOP_K, K_PAD, BLOCK_T, BLOCK_C, SIGMOID, HAS_BIAS, RENORM, N_GROUPS, TOPK_GROUPS,
            G_PAD, GROUP_SIZE, MOGE_GROUPS, USE_TOP_P,
        )
        inr = (rows < T)[:, None] & (karange < TOP_K)[None, :]  # [BT, KP]
        flat = rows[:, None] * TOP_K + karange[None, :]
        ex = tl.sum(tl.where(inr & (flat == p), ids, 0))  # slot p's expert, -1 when null
        same = inr & (ids == ex)  # the slots with that expert (no lead when ex is -1)
        lead = (ex >= 0) & (tl.sum(tl.where(same & (flat < p), 1, 0)) == 0)
    if pid_n == 0:
        if RANKED:
            wp = _slot_weight(logits_ptr, p, place_t, col, C, stride_lt, scaling, TOP_K,
                              BLOCK_C, SIGMOID, RENORM)
            w = tl.where((flat == p) & (ex >= 0), wp, 0.0)
        _write_block_layout(p, rows, w, inr, flat, ex, same, lead, M, wts_ptr, sorted_ids_ptr,
                            block_expert_ptr, num_padded_ptr, slot_pos_ptr, BLOCK_M, TOP_K)
    if lead:
        tok = tl.arange(0, BLOCK_M)  # row r of the block is token r
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = offs_n < N
        if TMA:  # w_ptr is `grouped_gemm_tma.gate_up_descriptor`'s
            h = _swiglu_tile_tma(x_ptr, w_ptr, ex, tok, tok < T, pid_n, N, K, stride_xm, BLOCK_M,
                                 BLOCK_N, BLOCK_K, EVEN, UPCAST, PRECISION)
        else:
            h = _swiglu_tile(x_ptr, w_ptr, ex, tok, tok < T, offs_n, nmask, N, K, stride_xm,
                             stride_we, stride_wn, BLOCK_M, BLOCK_N, BLOCK_K, EVEN, UPCAST,
                             PRECISION)
        h_ptrs = h_ptr + (p * BLOCK_M + tok)[:, None].to(tl.int64) * stride_hm + offs_n[None, :]
        tl.store(h_ptrs, h.to(h_ptr.dtype.element_ty), mask=nmask[None, :])


def ranks_apply(routing: RoutingConfig) -> bool:
    """Whether `_route_slot` can route: plain top-k, no groups (DeepSeek-V3, MoGE) and no top-p."""
    return routing.n_groups == 1 and routing.moge_groups <= 1 and routing.top_p is None


def gate_up_routed(
    x: torch.Tensor, w13: torch.Tensor, logits: torch.Tensor, routing: RoutingConfig, cfg: dict,
    bias: torch.Tensor | None = None, local_experts: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, ...]:
    """Route `logits` [T, C] (as `routing.route`) and run gate/up on the slots, one launch.

    `cfg` is the gate/up GEMM entry plus "BLOCK_M" (>= T) and optionally "PDL". Returns (h [P, I],
    topk_weights [T * K] fp32, sorted_ids [P], block_expert [T * K], num_padded [1],
    slot_pos [T * K]) with P = T * K * BLOCK_M: what `down` and `combine` take.
    """
    t, hid = x.shape
    c = logits.shape[1]
    routing.validate(c)
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    if not 0 < t <= bm:
        raise ValueError(f"gate_up_routed takes 1..BLOCK_M={bm} tokens, got {t}")
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    n = w13.shape[1] // 2
    m = t * routing.top_k
    dev = x.device
    h = torch.empty(m * bm, n, dtype=x.dtype, device=dev)
    wts = torch.empty(m, dtype=torch.float32, device=dev)
    sorted_ids = torch.empty(m * bm, dtype=torch.int32, device=dev)
    block_expert = torch.empty(m, dtype=torch.int32, device=dev)
    num_padded = torch.empty(1, dtype=torch.int32, device=dev)
    slot_pos = torch.empty(m, dtype=torch.int32, device=dev)
    tma = bool(cfg.get("TMA"))
    _gate_up_routed_kernel[(m * triton.cdiv(n, bn),)](
        x, gate_up_descriptor(w13, cfg) if tma else w13, h, logits, bias if bias is not None else logits, wts, sorted_ids, block_expert,
        num_padded, slot_pos, t, c, c - routing.num_null_experts, logits.stride(0),
        float(routing.top_p or 1.0), float(routing.routed_scaling), *local_range(c, local_experts),
        n, hid, x.stride(0), w13.stride(0), w13.stride(1), h.stride(0),
        BLOCK_T=triton.next_power_of_2(t), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=cfg["BLOCK_K"],
        GROUP_M=cfg["GROUP_M"], EVEN=hid % cfg["BLOCK_K"] == 0 and n % bn == 0,
        UPCAST=_interpret(), PRECISION=_precision(x), PDL=bool(cfg.get("PDL")),
        RANKED=bool(cfg.get("RANKED")) and ranks_apply(routing), TMA=tma,
        **route_meta(routing, c, bias is not None), **_launch(cfg),
    )
    return h, wts, sorted_ids, block_expert, num_padded, slot_pos
