from __future__ import annotations

import pytest
import torch

from experts.moe.kernels.align import _prefix_kernel, align, align_chunk, layout_tile
from experts.moe.kernels.reference import align_reference, max_padded_rows


def _ids(kind: str, t: int, k: int, e: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(t * 7 + k * 3 + e)
    if kind == "uniform":
        return torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(t)]).int()
    if kind == "one_expert":  # every token's first slot to expert e-1, rest null
        ids = torch.full((t, k), -1, dtype=torch.int32)
        ids[:, 0] = e - 1
        return ids
    if kind == "empty_experts":  # only the even experts are used
        return (torch.stack([torch.randperm(e // 2, generator=g)[:k] for _ in range(t)]) * 2).int()
    if kind == "with_nulls":
        ids = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(t)]).int()
        ids[torch.rand(t, k, generator=g) < 0.3] = -1
        return ids
    raise ValueError(kind)


CASES = [
    ("uniform", 1, 2, 8, 16),
    ("uniform", 37, 3, 13, 16),  # prime E
    ("uniform", 9, 7, 7, 16),  # k = E
    ("uniform", 200, 4, 64, 32),  # several chunks
    ("one_expert", 50, 2, 5, 16),
    ("empty_experts", 21, 2, 12, 16),
    ("with_nulls", 33, 4, 9, 16),
    ("uniform", 500, 4, 512, 16),  # wide E: 32 prefix programs, 38 layout programs
]


@pytest.mark.parametrize(("kind", "t", "k", "e", "bm"), CASES)
def test_align_matches_reference(kind, t, k, e, bm, device: torch.device) -> None:
    ids = _ids(kind, t, k, e).to(device)
    m = t * k
    p = max_padded_rows(m, e, bm)
    out = (
        torch.full((p,), -5, dtype=torch.int32, device=device),  # poison every output
        torch.full((p // bm,), -5, dtype=torch.int32, device=device),
        torch.full((1,), -5, dtype=torch.int32, device=device),
        torch.full((m,), -5, dtype=torch.int32, device=device),
    )
    got = [x.cpu() for x in align(ids, e, bm, out=out)]
    ref = [x.cpu() for x in align_reference(ids.cpu(), e, bm)]
    for name, a, b in zip(("sorted_ids", "block_expert", "num_padded", "slot_pos"), got, ref,
                          strict=True):
        assert torch.equal(a, b), name
    sorted_ids, block_expert, num_padded, slot_pos = got
    flat = ids.reshape(-1).cpu()
    valid = flat >= 0
    n = int(num_padded)
    assert n % bm == 0 and n <= p
    # inverse permutation: every real slot appears once, at slot_pos
    assert torch.equal(sorted_ids[slot_pos[valid].long()], torch.arange(m)[valid].int())
    assert (slot_pos[~valid] == -1).all()
    assert int((sorted_ids < m).sum()) == int(valid.sum())
    # each real row lies in a block of its own expert; rows past n are padding
    rows = slot_pos[valid].long()
    assert torch.equal(block_expert[rows // bm], flat[valid])
    assert (sorted_ids[n:] == m).all() and (block_expert[n // bm :] == -1).all()
    # count check: num_padded = sum of per-expert counts rounded up to bm
    counts = torch.bincount(flat[valid].long(), minlength=e)
    assert n == int(((counts + bm - 1) // bm * bm).sum())


def test_align_deterministic(device: torch.device) -> None:
    ids = _ids("uniform", 300, 4, 16, ).to(device)
    a = align(ids, 16, 16)
    b = align(ids, 16, 16)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert 300 * 4 > align_chunk(16)  # the case spans several programs


def test_wide_case_uses_several_layout_programs() -> None:
    p = max_padded_rows(500 * 4, 512, 16)
    assert p // 16 > layout_tile(16, 512)  # the E=512 case above spreads its blocks


def test_chunk_prefix_over_several_tiles(device: torch.device) -> None:
    g = torch.Generator().manual_seed(3)
    n_chunks, e_pad = 37, 32
    counts = torch.randint(0, 50, (n_chunks, e_pad), generator=g, dtype=torch.int32).to(device)
    chunk_off = torch.full_like(counts, -5)
    totals = torch.full((e_pad,), -5, dtype=torch.int32, device=device)
    # 2 programs of 16 columns, 10 steps of 4 chunks (the last one partial)
    _prefix_kernel[(2,)](counts, chunk_off, totals, n_chunks, E_PAD=e_pad, E_BLOCK=16, C_TILE=4)
    ref = counts.cpu().cumsum(0) - counts.cpu()
    assert torch.equal(chunk_off.cpu(), ref.int())
    assert torch.equal(totals.cpu(), counts.cpu().sum(0).int())


def test_max_padded_rows_bound() -> None:
    assert max_padded_rows(1, 256, 64) == 64  # one slot: one block, not E blocks
    assert max_padded_rows(16, 8, 16) == 16 + 8 * 15 + 8  # rounded up to a whole block
