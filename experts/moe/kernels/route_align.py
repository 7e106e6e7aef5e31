"""Decode path: routing and alignment fused into one single-program launch.

At decode the layer's time is mostly weight streaming plus per-launch latency, so for few slots
(T * K <= `MAX_FUSED_SLOTS`) one program routes every token and lays the slots out exactly as
`routing.route` followed by `align.align` would (same outputs, checked by the tests).
"""

from __future__ import annotations

import torch

from experts.moe.kernels._triton import gdc_launch_dependents, tl, triton
from experts.moe.kernels.align import _fill, _rank_in_expert, _write_layout, nb_tile
from experts.moe.kernels.reference import RoutingConfig, max_padded_rows
from experts.moe.kernels.routing import _route_block, local_range, route_meta

MAX_FUSED_SLOTS = 128


@triton.jit
def _write_slot_layout(
    ex, block_expert_ptr, num_padded_ptr, sorted_ids_ptr, M, P,
    BLOCK_M: tl.constexpr, N: tl.constexpr, TAIL_TILE: tl.constexpr,
):
    """The layout from the N slots alone ([N, N] compares), for when experts outnumber slots.

    `ex` [N] holds each slot's local expert in ascending slot order, -1 for none. Writes the
    block -> expert map, the padding and tail rows and the padded total exactly as
    `align._write_layout` does; returns each slot's row (meaningless where ex < 0).
    """
    valid = ex >= 0
    idx = tl.arange(0, N)
    same = (ex[:, None] == ex[None, :]) & valid[:, None] & valid[None, :]  # [N, N]
    count = tl.sum(same.to(tl.int32), axis=1)  # slots of this slot's expert
    rank = tl.sum((same & (idx[None, :] < idx[:, None])).to(tl.int32), axis=1)  # stable rank
    padded = (count + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    lead = tl.where(valid & (rank == 0), padded, 0)  # each expert's size, once, at its first slot
    start = tl.sum(tl.where(ex[None, :] < ex[:, None], lead[None, :], 0), axis=1)
    # The total from the [N, N] tile like `start`, not `tl.sum(lead)`: Triton 3.6 placed `lead`
    # in the replicated linear layout of `ex`'s reshape and summed it wrong on the H200
    # (NOTES.md, Session 10).
    total = tl.sum(tl.sum(tl.where(idx[:, None] == 0, lead[None, :], 0), axis=1), axis=0)
    pos = start + rank
    tl.store(num_padded_ptr, total)
    # Every block of an expert starts at one of its slots (ranks 0, BLOCK_M, ...).
    tl.store(block_expert_ptr + pos // BLOCK_M, ex, mask=valid & (rank % BLOCK_M == 0))
    j = tl.arange(0, BLOCK_M)
    pad_mask = (valid & (rank == count - 1))[:, None] & (j[None, :] < (padded - count)[:, None])
    tl.store(sorted_ids_ptr + (start + count)[:, None] + j[None, :],
             tl.full([N, BLOCK_M], 0, tl.int32) + M, mask=pad_mask)
    _fill(block_expert_ptr, total // BLOCK_M, P // BLOCK_M, -1, TAIL_TILE)  # past the last expert
    _fill(sorted_ids_ptr, total, P, M, TAIL_TILE)
    return pos


@triton.jit
def _route_align_kernel(
    logits_ptr, bias_ptr, ids_ptr, w_ptr, T, C, E_REAL, stride_t, top_p, scaling,
    local_lo, local_n, block_expert_ptr, num_padded_ptr, sorted_ids_ptr, slot_pos_ptr, E_LOCAL, P,
    TOP_K: tl.constexpr, K_PAD: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
    SIGMOID: tl.constexpr, HAS_BIAS: tl.constexpr, RENORM: tl.constexpr,
    N_GROUPS: tl.constexpr, TOPK_GROUPS: tl.constexpr, G_PAD: tl.constexpr,
    GROUP_SIZE: tl.constexpr, MOGE_GROUPS: tl.constexpr, USE_TOP_P: tl.constexpr,
    BLOCK_M: tl.constexpr, E_PAD: tl.constexpr, NB_TILE: tl.constexpr, SLOT_LAYOUT: tl.constexpr,
    PDL: tl.constexpr,
):
    if PDL:  # the grouped GEMM after this is a programmatic dependent launch: let it start now
        gdc_launch_dependents()
    rows, karange, ids, w = _route_block(
        logits_ptr, bias_ptr, T, C, E_REAL, stride_t, top_p, scaling, local_lo, local_n, 0,
        TOP_K, K_PAD, BLOCK_T, BLOCK_C, SIGMOID, HAS_BIAS, RENORM, N_GROUPS, TOPK_GROUPS, G_PAD,
        GROUP_SIZE, MOGE_GROUPS, USE_TOP_P,
    )
    M = T * TOP_K
    in_range = (rows < T)[:, None] & (karange < TOP_K)[None, :]  # [BT, KP]
    flat = rows[:, None] * TOP_K + karange[None, :]
    tl.store(ids_ptr + flat, ids, mask=in_range)
    tl.store(w_ptr + flat, w, mask=in_range)
    # Row-major flattening keeps ascending t*K+j order, so ranks are stable as in `align`.
    ex = tl.reshape(tl.where(in_range, ids, -1), [BLOCK_T * K_PAD])
    slot = tl.reshape(flat, [BLOCK_T * K_PAD])
    ok = tl.reshape(in_range, [BLOCK_T * K_PAD])
    valid = ex >= 0
    if SLOT_LAYOUT:
        pos = _write_slot_layout(ex, block_expert_ptr, num_padded_ptr, sorted_ids_ptr, M, P,
                                 BLOCK_M, BLOCK_T * K_PAD, 1024)
    else:
        ear = tl.arange(0, E_PAD)
        counts = tl.sum((ex[:, None] == ear[None, :]).to(tl.int32), axis=0)  # [E_PAD]
        start = _write_layout(counts, None, block_expert_ptr, num_padded_ptr, sorted_ids_ptr, M,
                              E_LOCAL, P, BLOCK_M, E_PAD, NB_TILE, 1024)
        rank = _rank_in_expert(ex, E_PAD)
        # start[ex] as a masked row-sum: a register vector cannot be indexed by a tensor.
        pos = tl.sum(tl.where(ex[:, None] == ear[None, :], start[None, :], 0), axis=1) + rank
    tl.store(sorted_ids_ptr + pos, slot, mask=valid)
    tl.store(slot_pos_ptr + slot, tl.where(valid, pos, -1), mask=ok)


#: Warps when the config sets no "ROUTE_WARPS". Measured on an H100
#: (benchmarks/kernels/experiments/exp_route_align.py, CUDA-graph timing): Qwen3 shape T=1
#: 1/2/4 warps 8.2/7.5/7.1 us, T=8 39.5/14.5/9.2 us; Mixtral 3.0/2.6/2.4 us.
DEFAULT_WARPS = 4


def route_align(
    logits: torch.Tensor,
    cfg: RoutingConfig,
    num_local_experts: int,
    block_m: int,
    bias: torch.Tensor | None = None,
    local_experts: tuple[int, int] | None = None,
    num_warps: int | None = None,
    slot_layout: bool = False,
    pdl: bool = False,
) -> tuple[torch.Tensor, ...]:
    """`route` then `align` in one launch, for T * top_k <= MAX_FUSED_SLOTS.

    The layout comes from per-expert counts ([slots, experts] tiles), or with `slot_layout`
    from the slots alone ([slots, slots] tiles, fewer operations when experts outnumber slots).
    Both give the same outputs, on Triton's interpreter and on the H200 (where the layout by slot
    was wrong in two test cases until its padded total came from the [N, N] tile; NOTES.md,
    Sessions 9-11). The layer asks for it where a config entry sets `"SLOT_LAYOUT": true`, which
    `benchmarks/kernels/tune_flags.py` writes only when measured faster and bit-identical.
    `pdl`: the next launch is a programmatic dependent (`grouped_gemm._launch`); let it start.
    `num_warps`: the config's `"ROUTE_WARPS"` (this one program's width), else `DEFAULT_WARPS`.

    Returns (topk_ids, topk_weights, sorted_ids, block_expert, num_padded, slot_pos).
    """
    t, c = logits.shape
    cfg.validate(c)
    m = t * cfg.top_k
    if not 0 < m <= MAX_FUSED_SLOTS:
        raise ValueError(f"route_align takes 1..{MAX_FUSED_SLOTS} slots, got T*K={m}; use "
                         "routing.route then align.align")
    outputs, args, consts = launch_arguments(logits, cfg, num_local_experts, block_m, bias,
                                             local_experts, slot_layout, pdl)
    _route_align_kernel[(1,)](*args, **consts, num_warps=num_warps or DEFAULT_WARPS)
    return outputs


def launch_arguments(
    logits: torch.Tensor, cfg: RoutingConfig, num_local_experts: int, block_m: int,
    bias: torch.Tensor | None, local_experts: tuple[int, int] | None, slot_layout: bool, pdl: bool,
) -> tuple[tuple[torch.Tensor, ...], tuple, dict]:
    """(outputs, run-time arguments, compile-time arguments) of one `_route_align_kernel` launch,
    also what `benchmarks/kernels/experiments/exp_route_align.py --static` compiles from."""
    t, c = logits.shape
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    dev = logits.device
    m = t * cfg.top_k
    p = max_padded_rows(m, num_local_experts, block_m)
    ids = torch.empty(t, cfg.top_k, dtype=torch.int32, device=dev)
    w = torch.empty(t, cfg.top_k, dtype=torch.float32, device=dev)
    sorted_ids = torch.empty(p, dtype=torch.int32, device=dev)
    block_expert = torch.empty(p // block_m, dtype=torch.int32, device=dev)
    num_padded = torch.empty(1, dtype=torch.int32, device=dev)
    slot_pos = torch.empty(m, dtype=torch.int32, device=dev)
    e_pad = triton.next_power_of_2(max(num_local_experts, 2))
    args = (
        logits, bias if bias is not None else logits, ids, w, t, c, c - cfg.num_null_experts,
        logits.stride(0), float(cfg.top_p or 1.0), float(cfg.routed_scaling),
        *local_range(c, local_experts), block_expert, num_padded, sorted_ids, slot_pos,
        num_local_experts, p,
    )
    consts = dict(BLOCK_T=triton.next_power_of_2(t), BLOCK_M=block_m, E_PAD=e_pad,
                  NB_TILE=nb_tile(e_pad), SLOT_LAYOUT=slot_layout, PDL=pdl,
                  **route_meta(cfg, c, bias is not None))
    return (ids, w, sorted_ids, block_expert, num_padded, slot_pos), args, consts
