from __future__ import annotations

import pytest
import torch

from experts.moe.kernels.align import align
from experts.moe.kernels.grouped_gemm import combine, down, gate_up
from experts.moe.kernels.reference import (
    TOLERANCE,
    RoutingConfig,
    experts_reference,
    gate_up_reference,
    rel_err,
    route_reference,
)
from experts.moe.layer import moe_experts

GEMM = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=2, num_warps=4, num_stages=2)


def _problem(t, e, k, h, inter, dtype, device, seed=0, skew=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, h, generator=g).to(dtype).to(device)
    w13 = (torch.randn(e, 2 * inter, h, generator=g) * h**-0.5).to(dtype).to(device)
    w2 = (torch.randn(e, h, inter, generator=g) * inter**-0.5).to(dtype).to(device)
    logits = torch.randn(t, e, generator=g)
    if skew:
        logits[:, 0] += 100.0  # every token picks expert 0 first
    ids, w = route_reference(logits, RoutingConfig(top_k=k, renormalize=True))
    return x, w13, w2, ids.to(device), w.to(device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gate_up_rows(dtype, device: torch.device) -> None:
    x, w13, _, ids, _ = _problem(11, 5, 2, 64, 48, dtype, device)  # I=48: ragged N tile
    sorted_ids, block_expert, num_padded, _ = align(ids, 5, 16)
    h = torch.full((sorted_ids.numel(), 48), float("nan"), dtype=dtype, device=device)
    gate_up(x, w13, sorted_ids, block_expert, num_padded, 2, GEMM, out=h)
    n = int(num_padded)
    ref = gate_up_reference(x.cpu(), w13.cpu(), sorted_ids.cpu(), block_expert.cpu(), 2, 16)
    assert rel_err(h[:n].cpu(), ref[:n]) < TOLERANCE[dtype]
    assert (h[:n].cpu()[sorted_ids[:n].cpu() >= 22] == 0).all()  # padding rows hold zeros


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("t", "e", "k", "skew"),
    [(1, 4, 2, False), (13, 7, 3, False), (9, 5, 5, False), (24, 6, 2, True)],
)
def test_experts_match_reference(t, e, k, skew, dtype, device: torch.device) -> None:
    h_dim, inter = 64, 32
    x, w13, w2, ids, w = _problem(t, e, k, h_dim, inter, dtype, device, seed=t, skew=skew)
    out = moe_experts(x, w13, w2, ids, w, config=dict(BLOCK_M=16, gate_up=GEMM, down=GEMM))
    ref = experts_reference(x.cpu().float(), w13.cpu().float(), w2.cpu().float(), ids.cpu(),
                            w.cpu())
    assert out.shape == (t, h_dim) and out.dtype == dtype
    assert rel_err(out.cpu(), ref) < TOLERANCE[dtype]


def test_down_and_combine_every_row_written(device: torch.device) -> None:
    dtype = torch.float32
    x, w13, w2, ids, w = _problem(10, 6, 3, 32, 32, dtype, device, seed=3)
    ids[2, 1] = -1  # a null slot contributes nothing
    w[2, 1] = 0.0
    sorted_ids, block_expert, num_padded, slot_pos = align(ids, 6, 16)
    hid = gate_up(x, w13, sorted_ids, block_expert, num_padded, 3, GEMM)
    y = torch.full((sorted_ids.numel(), 32), float("nan"), dtype=dtype, device=device)
    down(hid, w2, w.reshape(-1), sorted_ids, block_expert, num_padded, GEMM, out=y)
    assert torch.isfinite(y[slot_pos[slot_pos >= 0].long()]).all()
    out = torch.full((10, 32), float("nan"), dtype=dtype, device=device)
    combine(y, slot_pos, 10, 3, out=out)
    ref = experts_reference(x.cpu(), w13.cpu(), w2.cpu(), ids.cpu(), w.cpu())
    assert rel_err(out.cpu(), ref) < TOLERANCE[dtype]


def test_all_null_token_gives_zero(device: torch.device) -> None:
    x, w13, w2, ids, w = _problem(4, 4, 2, 32, 32, torch.float32, device, seed=5)
    ids[1] = -1
    w[1] = 0.0
    out = moe_experts(x, w13, w2, ids, w, config=dict(BLOCK_M=16, gate_up=GEMM, down=GEMM))
    assert (out[1] == 0).all() and torch.isfinite(out).all()


def test_deterministic(device: torch.device) -> None:
    x, w13, w2, ids, w = _problem(20, 4, 2, 32, 32, torch.bfloat16, device, seed=9)
    a = moe_experts(x, w13, w2, ids, w)
    b = moe_experts(x, w13, w2, ids, w)
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("t", "e", "k", "skew"), [(13, 7, 3, False), (24, 6, 2, True)])
def test_tma_path_matches_reference(t, e, k, skew, dtype, device: torch.device) -> None:
    # I=48: N tiles of gate/up run into the up half / next expert, down's K=48 is ragged.
    h_dim, inter = 64, 48
    x, w13, w2, ids, w = _problem(t, e, k, h_dim, inter, dtype, device, seed=t, skew=skew)
    tma = GEMM | {"TMA": True}
    out = moe_experts(x, w13, w2, ids, w, config=dict(BLOCK_M=16, gate_up=tma, down=tma))
    ref = experts_reference(x.cpu().float(), w13.cpu().float(), w2.cpu().float(), ids.cpu(),
                            w.cpu())
    assert out.shape == (t, h_dim) and out.dtype == dtype
    assert rel_err(out.cpu(), ref) < TOLERANCE[dtype]
