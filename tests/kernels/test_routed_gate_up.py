"""The gate/up GEMM that routes its own tokens (`routed_gate_up`, a config's "ROUTE_IN_GEMM"): the
layer through it against the plain-PyTorch reference, and its layout against what `down` and
`combine` need."""

from __future__ import annotations

import pytest
import torch

from experts.moe.kernels.reference import (
    TOLERANCE,
    RoutingConfig,
    rel_err,
)
from experts.moe.kernels.routed_gate_up import gate_up_routed, ranks_apply
from experts.moe.layer import moe_from_logits
from tests.kernels._problems import decode_problem

DSV3 = RoutingConfig(
    top_k=8, scoring="sigmoid", renormalize=True, n_groups=8, topk_groups=4, routed_scaling=2.5
)
CASES = {
    # name: (routing, logit columns, shard (first, count) or None, T, H, I)
    "one_token": (RoutingConfig(top_k=2, renormalize=True), 8, None, 1, 64, 32),
    "decode_batch": (RoutingConfig(top_k=4, renormalize=True), 16, None, 8, 64, 48),
    "max_tokens": (RoutingConfig(top_k=2), 6, None, 16, 32, 32),
    "prime_e_odd_dims": (RoutingConfig(top_k=3), 13, None, 5, 40, 24),
    "null_top_p": (RoutingConfig(top_k=4, top_p=0.6, num_null_experts=2), 10, None, 7, 32, 32),
    "qwen3_like": (RoutingConfig(top_k=8, renormalize=True), 128, None, 8, 32, 32),
    "deepseek_shard": (DSV3, 256, (96, 64), 3, 32, 32),
    "moge": (RoutingConfig(top_k=4, moge_groups=2, renormalize=True), 8, None, 4, 32, 32),
    "all_one_expert": (RoutingConfig(top_k=1), 6, None, 16, 32, 32),
    "null_no_top_p": (RoutingConfig(top_k=4, renormalize=True, num_null_experts=3), 12, None, 6,
                      32, 32),
    "softmax_shard": (RoutingConfig(top_k=4, renormalize=True), 32, (8, 16), 5, 32, 32),
}
GEMM = dict(BLOCK_N=16, BLOCK_K=32, GROUP_M=4, num_warps=4, num_stages=1)


def _problem(name: str, dtype: torch.dtype, device: torch.device):
    *head, ids, w, ref = decode_problem(name, CASES[name], dtype, device)
    return (*head, ids.cpu(), w.cpu(), ref)


def _ranked_cases(names) -> list:
    """(name, ranked) for each case, and ranked=True too where `_route_slot` applies."""
    return [(n, r) for n in names for r in (False, True) if not r or ranks_apply(CASES[n][0])]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("name", "ranked"), _ranked_cases(CASES))
def test_layer_routed_in_gemm_matches_reference(name, ranked, dtype, device: torch.device) -> None:
    routing, shard, x, w13, w2, logits, bias, *_, ref = _problem(name, dtype, device)
    cfg = dict(BLOCK_M=16, gate_up=GEMM | {"RANKED": ranked}, down=GEMM, ROUTE_IN_GEMM=True)
    out = moe_from_logits(x, logits, w13, w2, routing, bias, cfg, local_experts=shard)
    assert out.dtype == dtype and out.shape == x.shape
    assert rel_err(out.float().cpu(), ref) < TOLERANCE[dtype]  # inf if a row was left unwritten


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("name", "ranked"), _ranked_cases(
    ["decode_batch", "prime_e_odd_dims", "null_top_p", "softmax_shard", "deepseek_shard"]))
def test_layer_routed_in_gemm_with_tma_matches_reference(name, ranked, dtype,
                                                         device: torch.device) -> None:
    """The gate/up weight tiles through a tensor descriptor, and `down_tma` on the layout by slot
    (its empty blocks skipped)."""
    routing, shard, x, w13, w2, logits, bias, *_, ref = _problem(name, dtype, device)
    tma = GEMM | {"TMA": True}
    cfg = dict(BLOCK_M=16, gate_up=tma | {"RANKED": ranked}, down=tma, ROUTE_IN_GEMM=True)
    out = moe_from_logits(x, logits, w13, w2, routing, bias, cfg, local_experts=shard)
    assert rel_err(out.float().cpu(), ref) < TOLERANCE[dtype]


@pytest.mark.parametrize(("name", "ranked"), _ranked_cases(
    ["decode_batch", "null_top_p", "qwen3_like", "all_one_expert", "prime_e_odd_dims",
     "null_no_top_p", "softmax_shard"]))
def test_layout_by_slot_reads_each_expert_once(name, ranked, device: torch.device) -> None:
    """One block per slot, led by the expert's first slot: every routed (token, expert) pair is in
    exactly one block row, each expert in one block, `slot_pos` points at that row and the weights
    are the reference's."""
    routing, shard, x, w13, *_, logits, bias, ids, w, _ = _problem(name, torch.float32, device)
    t, k = ids.shape
    cfg = GEMM | {"BLOCK_M": 16, "RANKED": ranked}
    _, wts, sorted_ids, block_expert, num_padded, slot_pos = (
        v.cpu() for v in gate_up_routed(x, w13, logits, routing, cfg, bias, shard)
    )
    m = t * k
    assert num_padded.item() == m * 16
    torch.testing.assert_close(wts, w.reshape(-1).float(), rtol=1e-5, atol=1e-6)
    flat = ids.reshape(-1)
    leads = block_expert[block_expert >= 0]
    assert sorted(leads.tolist()) == sorted(set(flat[flat >= 0].tolist()))  # each expert once
    for p in range(m):
        row = slot_pos[p].item()
        if flat[p] < 0:
            assert row == -1
            continue
        assert block_expert[row // 16] == flat[p] and row % 16 == p // k
        assert sorted_ids[row] == p
    assert (sorted_ids < m).sum() == (flat >= 0).sum()  # no other row holds a slot


def test_too_many_tokens_for_the_block_is_refused(device: torch.device) -> None:
    routing, shard, x, w13, *_, logits, bias, _, _, _ = _problem("max_tokens", torch.float32,
                                                                 device)
    with pytest.raises(ValueError, match="tokens"):
        gate_up_routed(x, w13, logits, routing, GEMM | {"BLOCK_M": 8}, bias, shard)
