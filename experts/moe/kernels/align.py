"""Alignment: sort (token, slot) pairs by expert and pad each expert to BLOCK_M rows.

Three launches, no host synchronisation, output sizes fixed by (M, E, BLOCK_M) alone
(`reference.max_padded_rows`), so the whole layer can be captured in a CUDA graph.

1. `_count_kernel`  (grid = chunks): per-chunk expert histogram, [chunks, E_PAD].
2. `_prefix_kernel` (grid = E_PAD / 16): exclusive chunk prefix of 16 expert columns, a
   [C_TILE, 16] tile per step, and each expert's total.
3. `_scatter_kernel` (grid = max(chunks, layout tiles)): from the totals every program derives
   the padded expert starts; as a chunk program, the stable rank inside the chunk via a one-hot
   cumsum, then the row of every slot (`sorted_ids`) and its inverse (`slot_pos`); as a layout
   program, the block -> expert map of NB_TILE row blocks and their padding / tail rows.

The result is deterministic and stable (slots of one expert keep ascending t*K+j order), equal to
`reference.align_reference`. Ids outside [0, E) (the router's -1 null slots) are left out.
"""

from __future__ import annotations

import torch

from experts.moe.kernels._triton import tl, triton
from experts.moe.kernels.reference import max_padded_rows


@triton.jit
def _count_kernel(ids_ptr, counts_ptr, M, E, CHUNK: tl.constexpr, E_PAD: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * CHUNK + tl.arange(0, CHUNK)  # [CHUNK]
    ex = tl.load(ids_ptr + offs, mask=offs < M, other=-1)
    ear = tl.arange(0, E_PAD)
    onehot = (ex[:, None] == ear[None, :]).to(tl.int32)  # [CHUNK, E_PAD]
    tl.store(counts_ptr + pid * E_PAD + ear, tl.sum(onehot, axis=0))


@triton.jit
def _fill(ptr, start, end, value, TILE: tl.constexpr):
    """ptr[start:end] = value (int32), TILE entries per step."""
    for i0 in range(start // TILE * TILE, end, TILE):
        i = i0 + tl.arange(0, TILE)
        tl.store(ptr + i, tl.zeros([TILE], tl.int32) + value, mask=(i >= start) & (i < end))


@triton.jit
def _write_layout(
    running, start_ptr, block_expert_ptr, num_padded_ptr, sorted_ids_ptr, M, E, P,
    BLOCK_M: tl.constexpr, E_PAD: tl.constexpr, NB_TILE: tl.constexpr, TAIL_TILE: tl.constexpr,
):
    """From per-expert counts [E_PAD]: padded starts, block -> expert map, padding and tail."""
    ear = tl.arange(0, E_PAD)
    running = tl.where(ear < E, running, 0)
    padded = (running + BLOCK_M - 1) // BLOCK_M * BLOCK_M  # [E_PAD]
    start = tl.cumsum(padded, axis=0) - padded
    total = tl.sum(padded, axis=0)
    if start_ptr is not None:
        tl.store(start_ptr + ear, start)
    tl.store(num_padded_ptr, total)
    end = start + padded
    for b0 in range(0, P // BLOCK_M, NB_TILE):
        b = b0 + tl.arange(0, NB_TILE)  # [NB]
        r = b * BLOCK_M
        inside = (r[:, None] >= start[None, :]) & (r[:, None] < end[None, :])  # [NB, E_PAD]
        ex = tl.max(tl.where(inside, ear[None, :], -1), axis=1)
        tl.store(block_expert_ptr + b, ex, mask=b < P // BLOCK_M)
    # Padding rows of each expert, then the unused tail, hold the sentinel M.
    j = tl.arange(0, BLOCK_M)
    pad_rows = (start + running)[:, None] + j[None, :]  # [E_PAD, BLOCK_M]
    pad_mask = (j[None, :] < (padded - running)[:, None]) & (ear < E)[:, None]
    tl.store(sorted_ids_ptr + pad_rows, tl.full([E_PAD, BLOCK_M], 0, tl.int32) + M, mask=pad_mask)
    _fill(sorted_ids_ptr, total, P, M, TAIL_TILE)
    return start


@triton.jit
def _prefix_kernel(
    counts_ptr, chunk_off_ptr, totals_ptr, n_chunks,
    E_PAD: tl.constexpr, E_BLOCK: tl.constexpr, C_TILE: tl.constexpr,
):
    """Exclusive prefix over chunks for E_BLOCK expert columns, C_TILE chunks per step."""
    cols = tl.program_id(0) * E_BLOCK + tl.arange(0, E_BLOCK)
    car = tl.arange(0, C_TILE)
    running = tl.zeros([E_BLOCK], tl.int32)
    for c0 in range(0, n_chunks, C_TILE):
        rows = c0 + car  # [C_TILE]
        offs = rows[:, None] * E_PAD + cols[None, :]
        m = (rows < n_chunks)[:, None]
        cnt = tl.load(counts_ptr + offs, mask=m, other=0)
        # A separate buffer: small vectors are replicated across threads, so an in-place
        # store could land before another thread's load of the same count (seen on an H100).
        tl.store(chunk_off_ptr + offs, tl.cumsum(cnt, axis=0) - cnt + running[None, :], mask=m)
        running += tl.sum(cnt, axis=0)
    tl.store(totals_ptr + cols, running)


@triton.jit
def _rank_in_expert(ex, E_PAD: tl.constexpr):
    """For each slot: how many earlier slots of this vector went to the same expert."""
    onehot = (ex[:, None] == tl.arange(0, E_PAD)[None, :]).to(tl.int32)  # [N, E_PAD]
    before = tl.cumsum(onehot, axis=0) - onehot
    return tl.sum(before * onehot, axis=1)


@triton.jit
def _scatter_kernel(
    ids_ptr, chunk_off_ptr, totals_ptr, sorted_ids_ptr, slot_pos_ptr, block_expert_ptr,
    num_padded_ptr, M, E, P, n_chunks, n_layout,
    CHUNK: tl.constexpr, E_PAD: tl.constexpr, BLOCK_M: tl.constexpr, NB_TILE: tl.constexpr,
):
    pid = tl.program_id(0)
    ear = tl.arange(0, E_PAD)
    running = tl.load(totals_ptr + ear, mask=ear < E, other=0)  # [E_PAD] slots per expert
    padded = (running + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    start = tl.cumsum(padded, axis=0) - padded  # padded start of each expert
    if pid == 0:
        tl.store(num_padded_ptr, tl.sum(padded, axis=0))
    if pid < n_chunks:  # the slots of chunk `pid`
        offs = pid * CHUNK + tl.arange(0, CHUNK)  # [CHUNK]
        in_range = offs < M
        ex = tl.load(ids_ptr + offs, mask=in_range, other=-1)
        valid = in_range & (ex >= 0) & (ex < E)
        rank = _rank_in_expert(ex, E_PAD)  # [CHUNK]
        exc = tl.where(valid, ex, 0)
        onehot = exc[:, None] == ear[None, :]  # [CHUNK, E_PAD]
        base = tl.sum(tl.where(onehot, start[None, :], 0), axis=1)
        pos = base + tl.load(chunk_off_ptr + pid * E_PAD + exc) + rank
        tl.store(sorted_ids_ptr + pos, offs, mask=valid)
        tl.store(slot_pos_ptr + offs, tl.where(valid, pos, -1), mask=in_range)
    if pid < n_layout:  # row blocks [pid * NB_TILE, +NB_TILE): expert map and padding rows
        b = pid * NB_TILE + tl.arange(0, NB_TILE)  # [NB]
        bmask = b < P // BLOCK_M
        r0 = b * BLOCK_M
        inside = (r0[:, None] >= start[None, :]) & (r0[:, None] < (start + padded)[None, :])
        bex = tl.max(tl.where(inside, ear[None, :], -1), axis=1)  # -1 past the last expert
        bst = tl.max(tl.where(inside, start[None, :], 0), axis=1)
        bcnt = tl.max(tl.where(inside, running[None, :], 0), axis=1)
        tl.store(block_expert_ptr + b, bex, mask=bmask)
        j = tl.arange(0, BLOCK_M)
        pad = (bex < 0)[:, None] | ((r0 - bst)[:, None] + j[None, :] >= bcnt[:, None])
        tl.store(sorted_ids_ptr + r0[:, None] + j[None, :],
                 tl.full([NB_TILE, BLOCK_M], 0, tl.int32) + M, mask=pad & bmask[:, None])


def nb_tile(e_pad: int) -> int:
    """Row blocks per step of the block -> expert loop ([NB_TILE, E_PAD] compare tile)."""
    return max(16, min(256, 8192 // e_pad))


def prefix_tiles(e_pad: int, n_chunks: int) -> tuple[int, int]:
    """(E_BLOCK, C_TILE) of the chunk prefix: 16 expert columns per program, ~8K counts a step."""
    e_block = min(e_pad, 16)
    return e_block, max(1, min(triton.next_power_of_2(n_chunks), 8192 // e_block))


def layout_tile(block_m: int, e_pad: int) -> int:
    """Row blocks per program of the layout part of the scatter ([NB, BLOCK_M], [NB, E_PAD])."""
    return max(1, min(8192 // block_m, 8192 // e_pad))


def align_chunk(num_experts: int) -> int:
    """Slots per program: keeps the [CHUNK, E_PAD] one-hot tile near 16K int32 values."""
    return max(16, min(1024, 16384 // triton.next_power_of_2(num_experts)))


def align(
    topk_ids: torch.Tensor,
    num_experts: int,
    block_m: int,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Kernel version of `reference.align_reference` (same outputs, see its docstring).

    `out` may supply the four output tensors (sizes as `reference.max_padded_rows` gives).
    """
    flat = topk_ids.reshape(-1)  # [M]
    if flat.dtype != torch.int32:
        flat = flat.to(torch.int32)
    m = flat.numel()
    dev = flat.device
    p = max_padded_rows(m, num_experts, block_m)
    e_pad = triton.next_power_of_2(max(num_experts, 2))
    chunk = align_chunk(num_experts)
    n_chunks = max(1, triton.cdiv(m, chunk))
    counts = torch.empty(n_chunks, e_pad, dtype=torch.int32, device=dev)
    chunk_off = torch.empty_like(counts)
    totals = torch.empty(e_pad, dtype=torch.int32, device=dev)
    if out is None:
        sorted_ids = torch.empty(p, dtype=torch.int32, device=dev)
        block_expert = torch.empty(p // block_m, dtype=torch.int32, device=dev)
        num_padded = torch.empty(1, dtype=torch.int32, device=dev)
        slot_pos = torch.empty(m, dtype=torch.int32, device=dev)
    else:
        sorted_ids, block_expert, num_padded, slot_pos = out
    _count_kernel[(n_chunks,)](flat, counts, m, num_experts, CHUNK=chunk, E_PAD=e_pad)
    e_block, c_tile = prefix_tiles(e_pad, n_chunks)
    _prefix_kernel[(e_pad // e_block,)](
        counts, chunk_off, totals, n_chunks, E_PAD=e_pad, E_BLOCK=e_block, C_TILE=c_tile
    )
    nb = layout_tile(block_m, e_pad)
    n_layout = triton.cdiv(p // block_m, nb)
    _scatter_kernel[(max(n_chunks, n_layout),)](
        flat, chunk_off, totals, sorted_ids, slot_pos, block_expert, num_padded, m, num_experts,
        p, n_chunks, n_layout, CHUNK=chunk, E_PAD=e_pad, BLOCK_M=block_m, NB_TILE=nb,
    )
    return sorted_ids, block_expert, num_padded, slot_pos
