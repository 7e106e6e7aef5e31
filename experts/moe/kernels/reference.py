"""Plain-PyTorch references for every MoE kernel in this package.

Tests and benchmarks import these so that the two cannot drift. They favour clarity over speed
and compute in float32.

Conventions shared with the kernels (M = T * top_k flattened (token, slot) pairs):

| tensor            | shape            | dtype   | meaning                                         |
|-------------------|------------------|---------|-------------------------------------------------|
| logits            | [T, E + N_null]  | any     | router logits; the last N_null are null experts  |
| topk_ids          | [T, K]           | int32   | chosen expert, -1 for a null slot               |
| topk_weights      | [T, K]           | float32 | routing weight, 0 for a null slot               |
| sorted_ids        | [P]              | int32   | flat slot index t*K+j per padded row, M = pad   |
| block_expert      | [P // BLOCK_M]   | int32   | expert of each row block, -1 past the end       |
| num_padded        | [1]              | int32   | rows in use (a multiple of BLOCK_M)             |
| slot_pos          | [M]              | int32   | row of slot t*K+j in sorted order, -1 if null   |
| w13               | [E, 2I, H]       | bf16    | gate rows then up rows (transformers layout)    |
| w2                | [E, H, I]        | bf16    | down projection                                 |
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Relative L2 error allowed for float outputs against these references, per dtype: bf16 carries
# ~3 significant digits and the kernels round the intermediate h and the weighted y once each.
TOLERANCE = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; inf when `out` holds a NaN/inf (e.g. unwritten)."""
    a, b = out.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.isfinite(a).all():
        return float("inf")
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@dataclass(frozen=True)
class RoutingConfig:
    """How a router turns logits into (expert, weight) slots.

    Variants: plain top-k (Mixtral/Qwen3/OLMoE), DeepSeek-V3 group-limited top-k
    (`n_groups`, `topk_groups`, selection-only bias passed at call time, `routed_scaling`),
    Pangu MoGE (`moge_groups`: top_k / G experts from each of G equal groups), null experts
    (`num_null_experts` extra logit columns; a chosen null expert yields id -1 and costs nothing),
    dynamic top-p (`top_p`: slots are taken in score order until the cumulative probability
    reaches p; the remaining of the `top_k` slots become null).
    """

    top_k: int
    scoring: str = "softmax"  # "softmax" | "sigmoid"
    renormalize: bool = False
    n_groups: int = 1
    topk_groups: int = 1
    moge_groups: int = 1
    num_null_experts: int = 0
    top_p: float | None = None
    routed_scaling: float = 1.0

    def validate(self, num_columns: int) -> None:
        """Raise ValueError naming the fix when the config cannot route `num_columns` logits."""
        e = num_columns - self.num_null_experts
        if self.scoring not in ("softmax", "sigmoid"):
            raise ValueError(f"scoring={self.scoring!r}; use 'softmax' or 'sigmoid'")
        if not 1 <= self.top_k <= num_columns:
            raise ValueError(f"top_k={self.top_k} must be in [1, {num_columns}] (logit columns)")
        if self.n_groups > 1:
            if e % self.n_groups or e // self.n_groups < 2 or self.num_null_experts:
                raise ValueError(
                    f"n_groups={self.n_groups} needs E={e} divisible into groups of >= 2 experts"
                    " and no null experts"
                )
            if not 1 <= self.topk_groups <= self.n_groups:
                raise ValueError(f"topk_groups={self.topk_groups} must be in [1, n_groups]")
            if self.top_k > self.topk_groups * (e // self.n_groups):
                raise ValueError("top_k exceeds the experts in the kept groups; raise topk_groups")
        if self.moge_groups > 1 and (num_columns % self.moge_groups or self.top_k % self.moge_groups):
            raise ValueError(
                f"moge_groups={self.moge_groups} must divide both the {num_columns} logit columns"
                f" and top_k={self.top_k}"
            )
        if self.top_p is not None and not (0.0 < self.top_p <= 1.0 and self.scoring == "softmax"):
            raise ValueError("top_p must be in (0, 1] and needs scoring='softmax'")


def route_reference(
    logits: torch.Tensor, cfg: RoutingConfig, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference router. logits [T, C] (C = E + null), bias [C] or None (selection only).

    Returns (topk_ids [T, K] int32 with -1 for null slots, topk_weights [T, K] float32), slots in
    descending order of the selection score (MoGE: group by group).
    """
    t, c = logits.shape
    cfg.validate(c)
    e = c - cfg.num_null_experts
    s = logits.float()
    scores = s.softmax(-1) if cfg.scoring == "softmax" else s.sigmoid()  # [T, C]
    choice = scores + bias.float() if bias is not None else scores.clone()  # [T, C]
    k = cfg.top_k
    if cfg.n_groups > 1:
        g = cfg.n_groups
        grp = choice.view(t, g, e // g).topk(2, dim=-1).values.sum(-1)  # [T, G]
        keep = grp.topk(cfg.topk_groups, dim=-1).indices  # [T, topk_groups]
        gmask = torch.zeros_like(grp, dtype=torch.bool).scatter_(1, keep, True)  # [T, G]
        choice = choice.masked_fill(~gmask.repeat_interleave(e // g, dim=1), float("-inf"))
    if cfg.moge_groups > 1:
        g = cfg.moge_groups
        per = c // g
        idx = choice.view(t, g, per).topk(k // g, dim=-1).indices  # [T, G, k/G]
        ids = (idx + torch.arange(g, device=s.device).view(1, g, 1) * per).reshape(t, k)
    else:
        ids = choice.topk(k, dim=-1).indices  # [T, K]
    w = scores.gather(1, ids)  # [T, K]
    taken = torch.ones_like(w, dtype=torch.bool)
    if cfg.top_p is not None:
        before = w.cumsum(-1) - w  # probability mass of earlier slots
        taken = before < cfg.top_p
    w = torch.where(taken, w, 0.0)
    if cfg.renormalize:
        w = w / (w.sum(-1, keepdim=True) + 1e-20)
    w = w * cfg.routed_scaling
    null = (ids >= e) | ~taken
    ids = torch.where(null, -1, ids).to(torch.int32)
    w = torch.where(null, 0.0, w)
    return ids, w


def localize(
    ids: torch.Tensor, weights: torch.Tensor, first: int, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the slots of an expert-parallel shard's experts [first, first + count), renumbered
    from 0; other slots become null (-1, weight 0)."""
    mine = (ids >= first) & (ids < first + count)
    return torch.where(mine, ids - first, -1).to(torch.int32), torch.where(mine, weights, 0.0)


def max_padded_rows(num_slots: int, num_experts: int, block_m: int) -> int:
    """Upper bound on the padded row count: only non-empty experts (<= min(E, M)) add padding."""
    rows = num_slots + min(num_experts, num_slots) * (block_m - 1)
    return max(block_m, -(-rows // block_m) * block_m)


def align_reference(
    topk_ids: torch.Tensor, num_experts: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort slots by expert (stable), pad each expert to `block_m` rows.

    Returns (sorted_ids [P], block_expert [P // block_m], num_padded [1], slot_pos [M]); see the
    module table. Padding rows hold M; blocks past `num_padded` hold expert -1.
    """
    flat = topk_ids.reshape(-1).long()  # [M]
    m = flat.numel()
    p = max_padded_rows(m, num_experts, block_m)
    sorted_ids = torch.full((p,), m, dtype=torch.int32, device=flat.device)
    block_expert = torch.full((p // block_m,), -1, dtype=torch.int32, device=flat.device)
    slot_pos = torch.full((m,), -1, dtype=torch.int32, device=flat.device)
    row = 0
    for ex in range(num_experts):
        members = (flat == ex).nonzero().flatten()  # ascending slot order = stable
        n = members.numel()
        if n == 0:
            continue
        sorted_ids[row : row + n] = members.int()
        slot_pos[members] = torch.arange(row, row + n, device=flat.device, dtype=torch.int32)
        nb = -(-n // block_m)
        block_expert[row // block_m : row // block_m + nb] = ex
        row += nb * block_m
    num_padded = torch.tensor([row], dtype=torch.int32, device=flat.device)
    return sorted_ids, block_expert, num_padded, slot_pos


def experts_reference(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
) -> torch.Tensor:
    """SwiGLU experts combined by routing weight, per-expert loop in float32. x [T, H] -> [T, H]."""
    t, h = x.shape
    inter = w13.shape[1] // 2
    out = torch.zeros(t, h, dtype=torch.float32, device=x.device)
    xf = x.float()
    for ex in range(w13.shape[0]):
        tok, slot = (topk_ids == ex).nonzero(as_tuple=True)
        if tok.numel() == 0:
            continue
        gu = xf[tok] @ w13[ex].float().t()  # [n, 2I]
        act = torch.nn.functional.silu(gu[:, :inter]) * gu[:, inter:]  # [n, I]
        y = act @ w2[ex].float().t()  # [n, H]
        out.index_add_(0, tok, y * topk_weights[tok, slot].float()[:, None])
    return out.to(x.dtype)


def gate_up_reference(
    x: torch.Tensor, w13: torch.Tensor, sorted_ids: torch.Tensor, block_expert: torch.Tensor,
    top_k: int, block_m: int,
) -> torch.Tensor:
    """silu(x_row @ Wg.T) * (x_row @ Wu.T) per padded row; padding rows are 0. -> [P, I] fp32."""
    m = x.shape[0] * top_k
    inter = w13.shape[1] // 2
    out = torch.zeros(sorted_ids.numel(), inter, dtype=torch.float32, device=x.device)
    for r in range(sorted_ids.numel()):
        sid = int(sorted_ids[r])
        ex = int(block_expert[r // block_m])
        if sid >= m or ex < 0:
            continue
        gu = x[sid // top_k].float() @ w13[ex].float().t()  # [2I]
        out[r] = torch.nn.functional.silu(gu[:inter]) * gu[inter:]
    return out


def moe_reference(
    x: torch.Tensor,
    router_weight: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    cfg: RoutingConfig,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The whole layer: logits = x @ router_weight.T, route, experts, combine. x [T, H] -> [T, H]."""
    logits = x.float() @ router_weight.float().t()  # [T, C]
    ids, w = route_reference(logits, cfg, bias)
    return experts_reference(x, w13, w2, ids, w)
