"""Seeded small MoE problems for the decode-path kernel tests, with their reference output."""

from __future__ import annotations

import torch

from experts.moe.kernels.reference import (
    RoutingConfig,
    experts_reference,
    localize,
    route_reference,
)

#: (routing, logit columns, shard (first, count) or None, T, H, I)
Spec = tuple[RoutingConfig, int, tuple[int, int] | None, int, int, int]


def decode_problem(name: str, spec: Spec, dtype: torch.dtype, device: torch.device):
    """(routing, shard, x, w13, w2, logits, bias, ids, weights, reference output) for `spec`,
    seeded by `name`; the reference is fp32 on the CPU, the rest on `device`. A case named
    "all_one_expert" routes every token to expert 3."""
    cfg, c, shard, t, h, inter = spec
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
    return cfg, shard, on(x), on(w13), on(w2), on(logits), on(bias), on(ids), on(w), ref
