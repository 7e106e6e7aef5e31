from __future__ import annotations

import pytest
import torch

from experts.moe.kernels.reference import RoutingConfig, route_reference
from experts.moe.kernels.routing import route

VARIANTS = {
    "mixtral": (RoutingConfig(top_k=2, renormalize=True), 8),
    "qwen3": (RoutingConfig(top_k=4, renormalize=True), 16),
    "olmoe_no_renorm": (RoutingConfig(top_k=3), 12),
    "prime_e": (RoutingConfig(top_k=3, renormalize=True), 13),
    "k_equals_e": (RoutingConfig(top_k=7), 7),
    "sigmoid": (RoutingConfig(top_k=2, scoring="sigmoid", renormalize=True), 10),
    "deepseek_v3": (
        RoutingConfig(top_k=4, scoring="sigmoid", renormalize=True, n_groups=4, topk_groups=2,
                      routed_scaling=2.5),
        32,
    ),
    # 256 experts in 8 groups of 32, as DeepSeek-V3 (groups viewed as [groups, size] in-kernel)
    "deepseek_v3_full": (
        RoutingConfig(top_k=8, scoring="sigmoid", renormalize=True, n_groups=8, topk_groups=4,
                      routed_scaling=2.5),
        256,
    ),
    # groups of 6: not a power of two, so the kernel takes them one at a time
    "grouped_odd": (
        RoutingConfig(top_k=4, scoring="sigmoid", renormalize=True, n_groups=4, topk_groups=2),
        24,
    ),
    "moge": (RoutingConfig(top_k=4, moge_groups=4, renormalize=True), 16),
    "null_experts": (RoutingConfig(top_k=3, num_null_experts=3, renormalize=True), 11),
    "top_p": (RoutingConfig(top_k=4, top_p=0.6), 9),
    "top_p_null": (RoutingConfig(top_k=4, top_p=0.7, num_null_experts=2), 10),
}


def _run(name: str, t: int, device: torch.device, dtype: torch.dtype = torch.float32):
    cfg, c = VARIANTS[name]
    g = torch.Generator().manual_seed(t * 31 + c)
    logits = (torch.randn(t, c, generator=g) * 2).to(dtype).to(device)
    bias = (torch.randn(c, generator=g) * 0.2).to(device) if cfg.n_groups > 1 else None
    ids = torch.full((t, cfg.top_k), -7, dtype=torch.int32, device=device)  # poison
    w = torch.full((t, cfg.top_k), float("nan"), device=device)
    route(logits, cfg, bias, out=(ids, w))
    ref_ids, ref_w = route_reference(logits, cfg, bias)
    return cfg, c, ids.cpu(), w.cpu(), ref_ids.cpu(), ref_w.cpu()


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("t", [1, 37])
def test_route_matches_reference(name: str, t: int, device: torch.device) -> None:
    cfg, c, ids, w, ref_ids, ref_w = _run(name, t, device)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(w, ref_w, rtol=1e-5, atol=1e-6)
    e = c - cfg.num_null_experts
    real = ids >= 0
    assert ((ids >= -1) & (ids < e)).all()
    assert (w[~real] == 0).all() and (w[real] > 0).all()
    for row in ids.tolist():  # no expert twice in one token
        chosen = [i for i in row if i >= 0]
        assert len(chosen) == len(set(chosen))
    if cfg.renormalize and not cfg.num_null_experts:
        torch.testing.assert_close(w.sum(-1), torch.full((t,), cfg.routed_scaling))


@pytest.mark.parametrize("name", ["deepseek_v3", "deepseek_v3_full", "grouped_odd"])
def test_group_limited_stays_in_kept_groups(name: str, device: torch.device) -> None:
    cfg, c, ids, *_ = _run(name, 37, device)
    per = c // cfg.n_groups
    for row in ids.tolist():
        assert len({i // per for i in row}) <= cfg.topk_groups


def test_moge_takes_k_over_g_from_each_group(device: torch.device) -> None:
    cfg, c, ids, *_ = _run("moge", 37, device)
    per = c // cfg.moge_groups
    groups = (ids // per).sort(-1).values
    want = torch.arange(cfg.moge_groups).repeat_interleave(cfg.top_k // cfg.moge_groups)
    assert (groups == want).all()


def test_top_p_takes_minimal_prefix(device: torch.device) -> None:
    cfg, _, ids, w, *_ = _run("top_p", 37, device)
    assert (ids[:, 0] >= 0).all()  # the best expert is always taken
    for row_ids, row_w in zip(ids.tolist(), w.tolist(), strict=True):
        taken = [x for x, i in zip(row_w, row_ids, strict=True) if i >= 0]
        assert sum(taken[:-1]) < cfg.top_p  # dropping the last taken slot would fall short
        assert row_ids[: len(taken)] == [i for i in row_ids if i >= 0]  # nulls only at the end


def test_route_bf16_logits_and_determinism(device: torch.device) -> None:
    _, _, ids1, w1, ref_ids, _ = _run("qwen3", 37, device, torch.bfloat16)
    _, _, ids2, w2, _, _ = _run("qwen3", 37, device, torch.bfloat16)
    assert torch.equal(ids1, ids2) and torch.equal(w1, w2)
    # bf16 logits can tie; compare only rows whose k-th and (k+1)-th scores differ.
    assert (ids1 == ref_ids).all(-1).float().mean() > 0.9


def test_validation_messages() -> None:
    with pytest.raises(ValueError, match="top_k"):
        RoutingConfig(top_k=9).validate(8)
    with pytest.raises(ValueError, match="n_groups"):
        RoutingConfig(top_k=2, n_groups=3).validate(8)
    with pytest.raises(ValueError, match="moge_groups"):
        RoutingConfig(top_k=3, moge_groups=2).validate(8)
