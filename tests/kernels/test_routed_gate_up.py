"""The gate/up GEMM that routes its own tokens (`routed_gate_up`, a config's "ROUTE_IN_GEMM", with
"COMBINE_IN_DOWN" the down GEMM that combines): the layer through them against the plain-PyTorch
reference, and the layout against what `down` and `combine` need."""

from __future__ import annotations

import pytest
import torch

from experts.moe.kernels.reference import (
    TOLERANCE,
    RoutingConfig,
    experts_reference,
    localize,
    rel_err,
    route_reference,
)
from experts.moe.kernels.routed_gate_up import gate_up_routed
from experts.moe.layer import moe_from_logits

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
}
GEMM = dict(BLOCK_N=16, BLOCK_K=32, GROUP_M=4, num_warps=4, num_stages=1)


def _problem(name: str, dtype: torch.dtype, device: torch.device):
    cfg, c, shard, t, h, inter = CASES[name]
    g = torch.Generator().manual_seed(len(name))
    e = shard[1] if shard else c - cfg.num_null_experts
    x = torch.randn(t, h, generator=g).to(dtype)
    w13 = (torch.randn(e, 2 * inter, h, generator=g) * h**-0.5).to(dtype)
    w2 = (torch.randn(e, h, inter, generator=g) * inter**-0.5).to(dtype)
    logits = torch.randn(t, c, generator=g) * 2
    if name == "all_one_expert":
        logits[:, 3] += 50.0
    bias = torch.randn(c, generator=g) * 0.1 if cfg.n_groups > 1 else None
    ids, w = route_reference(logits, cfg, bias)
    if shard is not None:
        ids, w = localize(ids, w, *shard)
    ref = experts_reference(x.float(), w13.float(), w2.float(), ids, w)
    on = lambda v: None if v is None else v.to(device)  # noqa: E731
    return cfg, shard, on(x), on(w13), on(w2), on(logits), on(bias), ids, w, ref


@pytest.mark.parametrize("fused", [False, True], ids=["combine", "combine_in_down"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(CASES))
def test_layer_routed_in_gemm_matches_reference(name, dtype, fused, device: torch.device) -> None:
    routing, shard, x, w13, w2, logits, bias, *_, ref = _problem(name, dtype, device)
    cfg = dict(BLOCK_M=16, gate_up=GEMM, down=GEMM, ROUTE_IN_GEMM=True, COMBINE_IN_DOWN=fused)
    out = moe_from_logits(x, logits, w13, w2, routing, bias, cfg, local_experts=shard)
    assert out.dtype == dtype and out.shape == x.shape
    assert rel_err(out.float().cpu(), ref) < TOLERANCE[dtype]  # inf if a row was left unwritten


@pytest.mark.parametrize("name", ["decode_batch", "null_top_p", "qwen3_like", "all_one_expert"])
def test_layout_by_slot_reads_each_expert_once(name, device: torch.device) -> None:
    """One block per slot, led by the expert's first slot: every routed (token, expert) pair is in
    exactly one block row, each expert in one block, `slot_pos` points at that row and the weights
    are the reference's."""
    routing, shard, x, w13, *_, logits, bias, ids, w, _ = _problem(name, torch.float32, device)
    t, k = ids.shape
    cfg = GEMM | {"BLOCK_M": 16}
    _, wts, sorted_ids, block_expert, num_padded, slot_pos, _ = (
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


def test_combine_in_down_twice_in_a_row_reuses_nothing(device: torch.device) -> None:
    """The check-in counters are zeroed by each call's gate/up: calls with other inputs give their
    own answers (those of the path with a combine launch), each combined exactly once."""
    cfg = dict(BLOCK_M=16, gate_up=GEMM, down=GEMM, ROUTE_IN_GEMM=True)
    for name in ("decode_batch", "qwen3_like"):
        routing, shard, x, w13, w2, logits, bias, *_ = _problem(name, torch.float32, device)
        for xi in (x, -2 * x, x.flip(0)):
            fused = moe_from_logits(xi, logits, w13, w2, routing, bias,
                                    cfg | {"COMBINE_IN_DOWN": True}, shard)
            plain = moe_from_logits(xi, logits, w13, w2, routing, bias, cfg, shard)
            assert rel_err(fused.cpu(), plain.cpu()) < 1e-6
