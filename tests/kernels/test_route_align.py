from __future__ import annotations

import pytest
import torch

from experts.moe.kernels.align import align
from experts.moe.kernels.reference import (
    RoutingConfig,
    align_reference,
    localize,
    max_padded_rows,
    route_reference,
)
from experts.moe.kernels.route_align import MAX_FUSED_SLOTS, route_align
from experts.moe.kernels.routing import route

DSV3 = RoutingConfig(top_k=4, scoring="sigmoid", renormalize=True, n_groups=4, topk_groups=2,
                     routed_scaling=2.5)
DSV3_FULL = RoutingConfig(top_k=8, scoring="sigmoid", renormalize=True, n_groups=8,
                          topk_groups=4, routed_scaling=2.5)
CASES = {
    # name: (cfg, logit columns, shard (first, count) or None, T[, BLOCK_M])
    "one_token": (RoutingConfig(top_k=2, renormalize=True), 8, None, 1),
    "decode_batch": (RoutingConfig(top_k=4, renormalize=True), 16, None, 8),
    "prime_e": (RoutingConfig(top_k=3), 13, None, 5),
    "k_equals_e": (RoutingConfig(top_k=5), 5, None, 3),
    "null_top_p": (RoutingConfig(top_k=4, top_p=0.6, num_null_experts=2), 10, None, 7),
    "deepseek_shard": (DSV3, 32, (8, 8), 9),
    "all_one_expert": (RoutingConfig(top_k=1), 6, None, 16),
    # more experts than slots (where the layout by slot does fewer operations)
    "qwen3_like": (RoutingConfig(top_k=8, renormalize=True), 128, None, 8),
    "qwen3_one_token": (RoutingConfig(top_k=8, renormalize=True), 128, None, 1),
    "deepseek_full": (DSV3_FULL, 256, None, 8, 64),
    "deepseek_full_shard": (DSV3_FULL, 256, (96, 64), 3),
    "crowded_expert": (RoutingConfig(top_k=2), 64, None, 16, 4),
}


def _expected(logits, cfg, c, shard, bias, bm):
    ids, w = route_reference(logits, cfg, bias)
    e = c - cfg.num_null_experts
    if shard is not None:
        ids, w = localize(ids, w, *shard)
        e = shard[1]
    return (ids, w, *align_reference(ids, e, bm)), e


# decode_batch and prime_e once gave a wrong layout by slot on the H200 (Triton 3.6): the padded
# total was summed over a reshape's linear layout. Since it is taken from the [N, N] tile, both
# pass there too (NOTES.md, Session 11); they run on the GPU like every other case.
# Warps: the layer's default and the widest a config's "ROUTE_WARPS" sets (on the GPU a wider
# program lays the same tensors out over more threads; the interpreter ignores it).
@pytest.mark.parametrize("warps", [4, 16])
@pytest.mark.parametrize("slot_layout", [False, True], ids=["by_expert", "by_slot"])
@pytest.mark.parametrize("name", list(CASES))
def test_route_align_matches_route_then_align(
    name: str, slot_layout: bool, warps: int, device: torch.device
) -> None:
    cfg, c, shard, t, *block = CASES[name]
    g = torch.Generator().manual_seed(len(name))
    logits = torch.randn(t, c, generator=g) * 2
    if name in ("all_one_expert", "crowded_expert"):  # one expert takes every token
        logits[:, 3] += 50.0
    bias = torch.randn(c, generator=g) * 0.1 if cfg.n_groups > 1 else None
    bm = block[0] if block else 16
    want, e = _expected(logits, cfg, c, shard, bias, bm)
    got = route_align(logits.to(device), cfg, e, bm,
                      bias.to(device) if bias is not None else None, shard,
                      num_warps=warps, slot_layout=slot_layout)
    names = ("ids", "weights", "sorted_ids", "block_expert", "num_padded", "slot_pos")
    for n, a, b in zip(names, got, want, strict=True):
        if n == "weights":
            torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(a.cpu(), b), n
    # the unfused kernels agree too (route with a shard, then align)
    ids, _ = route(logits.to(device), cfg, bias.to(device) if bias is not None else None,
                   local_experts=shard)
    assert torch.equal(ids.cpu(), want[0])
    assert all(torch.equal(a.cpu(), b) for a, b in zip(align(ids, e, bm), want[2:], strict=True))


def test_route_align_rejects_large_batches() -> None:
    logits = torch.randn(MAX_FUSED_SLOTS, 8)
    with pytest.raises(ValueError, match="route_align"):
        route_align(logits, RoutingConfig(top_k=2), 8, 16)


def test_align_stress_many_chunks(device: torch.device) -> None:
    # Several programs per launch, repeated: catches ordering races between kernels/threads.
    t, k, e, bm = (2048, 2, 8, 64) if device.type == "cuda" else (300, 2, 8, 16)
    g = torch.Generator().manual_seed(0)
    ids = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(t)]).int()
    want = align_reference(ids, e, bm)
    assert want[0].numel() == max_padded_rows(t * k, e, bm)
    for _ in range(20 if device.type == "cuda" else 2):
        got = align(ids.to(device), e, bm)
        assert all(torch.equal(a.cpu(), b) for a, b in zip(got, want, strict=True))
