"""The one-launch decode paths (`decode.moe_decode`, `staged.moe_staged`) against the plain-PyTorch
reference."""

from __future__ import annotations

import pytest
import torch

from experts.moe.kernels.decode import MAX_DECODE_TOKENS, moe_decode
from experts.moe.kernels.reference import (
    TOLERANCE,
    RoutingConfig,
    experts_reference,
    rel_err,
    route_reference,
)
from experts.moe.kernels.staged import moe_staged
from experts.moe.layer import moe_experts, moe_from_logits
from tests.kernels._problems import decode_problem

PATHS = {"decode": moe_decode, "staged": moe_staged}

DSV3 = RoutingConfig(
    top_k=4, scoring="sigmoid", renormalize=True, n_groups=4, topk_groups=2, routed_scaling=2.5
)
CASES = {
    # name: (routing, logit columns, shard (first, count) or None, T, H, I)
    "one_token": (RoutingConfig(top_k=2, renormalize=True), 8, None, 1, 64, 32),
    "decode_batch": (RoutingConfig(top_k=4, renormalize=True), 16, None, 8, 64, 48),
    "max_tokens": (RoutingConfig(top_k=2), 6, None, MAX_DECODE_TOKENS, 32, 32),
    "prime_e_odd_dims": (RoutingConfig(top_k=3), 13, None, 5, 40, 24),
    "k_equals_e": (RoutingConfig(top_k=5), 5, None, 3, 32, 16),
    "null_top_p": (RoutingConfig(top_k=4, top_p=0.6, num_null_experts=2), 10, None, 7, 32, 32),
    "deepseek_shard": (DSV3, 32, (8, 8), 6, 32, 32),
    "moge": (RoutingConfig(top_k=4, moge_groups=2, renormalize=True), 8, None, 4, 32, 32),
    "all_one_expert": (RoutingConfig(top_k=1), 6, None, 16, 32, 32),
}


def _problem(name: str, dtype: torch.dtype, device: torch.device):
    return decode_problem(name, CASES[name], dtype, device)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(CASES))
def test_decode_routes_and_matches_reference(name, dtype, path, device: torch.device) -> None:
    cfg, shard, x, w13, w2, logits, bias, _, _, ref = _problem(name, dtype, device)
    out = PATHS[path](x, w13, w2, logits=logits, routing=cfg, bias=bias, local_experts=shard)
    assert out.dtype == dtype and out.shape == x.shape
    assert rel_err(out.float(), ref) < TOLERANCE[dtype]  # inf if any row was left unwritten


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("name", ["one_token", "null_top_p", "deepseek_shard", "all_one_expert"])
def test_decode_from_given_ids(name, path, device: torch.device) -> None:
    *_, x, w13, w2, _, _, ids, w, ref = _problem(name, torch.float32, device)
    out = PATHS[path](x, w13, w2, topk_ids=ids, topk_weights=w)
    assert rel_err(out, ref) < TOLERANCE[torch.float32]


@pytest.mark.parametrize("path", list(PATHS))
def test_all_null_slots_give_zeros(path, device: torch.device) -> None:
    *_, x, w13, w2, _, _, ids, w, _ = _problem("decode_batch", torch.float32, device)
    out = PATHS[path](x, w13, w2, topk_ids=torch.full_like(ids, -1), topk_weights=w * 0)
    assert torch.equal(out, torch.zeros_like(out))


# Each entry has only its own path's tile keys: the other path would fail on it (KeyError).
DECODE_ENTRIES = {
    "decode": dict(BLOCK_I=16, BLOCK_K=16, BLOCK_H=16, num_warps=4, num_stages=1),
    "staged": dict(STAGED=True, BLOCK_N=16, BLOCK_K=16, BLOCK_H=16, BLOCK_KD=16, num_warps=4,
                   num_stages=1),
}


@pytest.mark.parametrize("path", list(PATHS))
def test_layer_entry_points_take_the_decode_config(path, device: torch.device) -> None:
    cfg, shard, x, w13, w2, logits, bias, ids, w, ref = _problem(
        "deepseek_shard", torch.float32, device
    )
    layer_cfg = {"BLOCK_M": 16, "gate_up": {}, "down": {},  # unused: decode runs instead
                 "decode": DECODE_ENTRIES[path]}  # fmt: skip
    out = moe_from_logits(x, logits, w13, w2, cfg, bias, layer_cfg, shard)
    assert rel_err(out, ref) < TOLERANCE[torch.float32]
    assert rel_err(moe_experts(x, w13, w2, ids, w, layer_cfg), ref) < TOLERANCE[torch.float32]


@pytest.mark.parametrize("path", list(PATHS))
def test_bad_arguments_say_what_to_fix(path, device: torch.device) -> None:
    fn = PATHS[path]
    cfg, _, x, w13, w2, logits, *_ = _problem("one_token", torch.float32, device)
    with pytest.raises(ValueError, match="tokens"):
        fn(
            torch.zeros(0, x.shape[1], device=device), w13, w2, logits=logits[:0], routing=cfg
        )
    big = x.expand(MAX_DECODE_TOKENS + 1, -1)
    with pytest.raises(ValueError, match="tokens"):
        fn(big, w13, w2, logits=logits.expand(big.shape[0], -1), routing=cfg)
    with pytest.raises(ValueError, match="do not fit"):
        fn(x, w13, w2[:, :-1], logits=logits, routing=cfg)
    with pytest.raises(ValueError, match="routing"):
        fn(x, w13, w2, logits=logits)
    with pytest.raises(ValueError, match="topk_ids"):
        fn(x, w13, w2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("path", list(PATHS))
def test_decode_replays_from_a_cuda_graph(path) -> None:
    cfg, _, x, w13, w2, logits, *_ = _problem("decode_batch", torch.bfloat16, torch.device("cuda"))
    run = lambda: PATHS[path](x, w13, w2, logits=logits, routing=cfg)  # noqa: E731
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        run()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = run()
    for _ in range(20):  # fresh accumulator every replay, no lost atomic update
        x.copy_(torch.randn_like(x))
        logits.copy_(torch.randn_like(logits))
        graph.replay()
        ids, w = route_reference(logits, cfg)
        ref = experts_reference(x.float(), w13.float(), w2.float(), ids, w)
        assert rel_err(captured.float(), ref) < TOLERANCE[torch.bfloat16]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="thousands of work items need a GPU")
@pytest.mark.parametrize("t", [1, 8, MAX_DECODE_TOKENS])
def test_staged_at_a_served_shape(t: int) -> None:
    """Qwen3-30B-A3B's expert shape (128 experts, top 8, H 2048, I 768): thousands of items wait
    on the routed flag and on their slot's gate/up items at once. 20 calls per routing, every one
    within tolerance (a lost atomic update or a read of h before it is written would show)."""
    torch.manual_seed(t)
    e, h, inter = 128, 2048, 768
    cfg = RoutingConfig(top_k=8, renormalize=True)
    x = torch.randn(t, h, dtype=torch.bfloat16, device="cuda")
    w13 = torch.randn(e, 2 * inter, h, dtype=torch.bfloat16, device="cuda") / h**0.5
    w2 = torch.randn(e, h, inter, dtype=torch.bfloat16, device="cuda") / inter**0.5
    for skew in (0.0, 4.0):  # uniform, then most tokens on a few experts (repeated slots)
        logits = torch.randn(t, e, device="cuda")
        logits[:, :4] += skew
        ids, w = route_reference(logits, cfg)
        ref = experts_reference(x.float(), w13.float(), w2.float(), ids, w)
        for _ in range(20):
            out = moe_staged(x, w13, w2, logits=logits, routing=cfg)
            assert rel_err(out.float(), ref) < TOLERANCE[torch.bfloat16]
