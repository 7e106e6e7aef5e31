"""Router kernel: scores, (group-limited / grouped) top-k, null experts, top-p, renormalisation.

One program routes BLOCK_T tokens; every expert selection is an iterated arg-max over the padded
logit row held in registers, so the output slots come in descending order of the selection score
(MoGE: group by group), exactly like `reference.route_reference`. DeepSeek-V3's kept groups are
ranked all at once when the groups are power-of-two sized (the same choice an iterated arg-max
makes), since decode latency is the length of this chain of reductions.

| tensor        | shape   | dtype            |
|---------------|---------|------------------|
| logits        | [T, C]  | fp32/bf16/fp16   |
| bias          | [C]     | fp32 (optional)  |
| topk_ids      | [T, K]  | int32, -1 = null |
| topk_weights  | [T, K]  | fp32, 0 = null   |
"""

from __future__ import annotations

import torch

from experts.moe.kernels._triton import tl, triton
from experts.moe.kernels.reference import RoutingConfig


@triton.jit
def _logit_rows(logits_ptr, rows, cols, rmask, cmask, stride_t):
    """Logits [R, BC] of `rows` in fp32: -inf past C, 0 on rows outside `rmask` (finite, never
    stored)."""
    s = tl.load(
        logits_ptr + rows[:, None] * stride_t + cols[None, :],
        mask=rmask[:, None] & cmask[None, :], other=-float("inf"),
    ).to(tl.float32)
    return tl.where(rmask[:, None], s, 0.0)


@triton.jit
def _scores(s, cmask, SIGMOID: tl.constexpr):
    """Router scores [R, BC] of logit rows `s`: softmax over the first C columns or sigmoid, 0
    past C."""
    if SIGMOID:
        scores = 1.0 / (1.0 + tl.exp(-s))
    else:
        mx = tl.max(s, axis=1)
        p = tl.exp(s - mx[:, None])
        p = tl.where(cmask[None, :], p, 0.0)
        scores = p / tl.sum(p, axis=1)[:, None]
    return tl.where(cmask[None, :], scores, 0.0)


@triton.jit
def _route_block(
    logits_ptr, bias_ptr, T, C, E_REAL, stride_t, top_p, scaling, local_lo, local_n, pid,
    TOP_K: tl.constexpr, K_PAD: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
    SIGMOID: tl.constexpr, HAS_BIAS: tl.constexpr, RENORM: tl.constexpr,
    N_GROUPS: tl.constexpr, TOPK_GROUPS: tl.constexpr, G_PAD: tl.constexpr,
    GROUP_SIZE: tl.constexpr, MOGE_GROUPS: tl.constexpr, USE_TOP_P: tl.constexpr,
):
    rows = pid * BLOCK_T + tl.arange(0, BLOCK_T)  # [BT]
    cols = tl.arange(0, BLOCK_C)  # [BC]
    rmask = rows < T
    cmask = cols < C
    s = _logit_rows(logits_ptr, rows, cols, rmask, cmask, stride_t)  # [BT, BC]
    scores = _scores(s, cmask, SIGMOID)
    choice = scores
    if HAS_BIAS:
        choice = choice + tl.load(bias_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    choice = tl.where(cmask[None, :], choice, -float("inf"))

    if N_GROUPS > 1 and GROUP_SIZE > 0:
        # DeepSeek-V3 with power-of-two groups filling the row: the row as [groups, group size],
        # so each group's two best (biased) scores take two reductions for all groups at once, and
        # a group is kept when fewer than TOPK_GROUPS groups beat it (higher score, or equal
        # score and a lower index: the order an iterated arg-max picks them in).
        v3 = tl.reshape(choice, [BLOCK_T, N_GROUPS, GROUP_SIZE])
        m1, a1 = tl.max(v3, axis=2, return_indices=True, return_indices_tie_break_left=True)
        inner = tl.arange(0, GROUP_SIZE)
        m2 = tl.max(tl.where(inner[None, None, :] == a1[:, :, None], -float("inf"), v3), axis=2)
        gs = m1 + m2  # [BT, G]
        garange = tl.arange(0, N_GROUPS)
        beats = (gs[:, :, None] > gs[:, None, :]) | (
            (gs[:, :, None] == gs[:, None, :]) & (garange[:, None] < garange[None, :])[None, :, :]
        )  # [BT, h, g]: group h is picked before group g
        rank = tl.sum(beats.to(tl.int32), axis=1)  # [BT, G]
        v3 = tl.where((rank < TOPK_GROUPS)[:, :, None], v3, -float("inf"))
        choice = tl.reshape(v3, [BLOCK_T, BLOCK_C])
    elif N_GROUPS > 1:
        # The same selection, one group at a time (group sizes that are not a power of two).
        gid = cols // (E_REAL // N_GROUPS)  # [BC]
        garange = tl.arange(0, G_PAD)  # [GP]
        gscores = tl.full([BLOCK_T, G_PAD], -float("inf"), tl.float32)
        for g in tl.static_range(N_GROUPS):
            v = tl.where((gid == g)[None, :] & cmask[None, :], choice, -float("inf"))
            a1 = tl.argmax(v, axis=1)
            m1 = tl.max(v, axis=1)
            m2 = tl.max(tl.where(cols[None, :] == a1[:, None], -float("inf"), v), axis=1)
            gscores = tl.where(garange[None, :] == g, (m1 + m2)[:, None], gscores)
        keep = tl.zeros([BLOCK_T, BLOCK_C], tl.int1)
        for _ in tl.static_range(TOPK_GROUPS):
            ga = tl.argmax(gscores, axis=1)  # [BT]
            keep = keep | (gid[None, :] == ga[:, None])
            gscores = tl.where(garange[None, :] == ga[:, None], -float("inf"), gscores)
        choice = tl.where(keep, choice, -float("inf"))

    karange = tl.arange(0, K_PAD)  # [KP]
    ids = tl.full([BLOCK_T, K_PAD], -1, tl.int32)
    w = tl.zeros([BLOCK_T, K_PAD], tl.float32)
    for j in tl.static_range(TOP_K):
        if MOGE_GROUPS > 1:
            mg = cols // (C // MOGE_GROUPS)
            v = tl.where((mg == j // (TOP_K // MOGE_GROUPS))[None, :], choice, -float("inf"))
        else:
            v = choice
        vmax, a = tl.max(v, axis=1, return_indices=True, return_indices_tie_break_left=True)
        a = a.to(tl.int32)  # [BT]
        choice = tl.where(cols[None, :] == a[:, None], -float("inf"), choice)
        ids = tl.where(karange[None, :] == j, a[:, None], ids)
        w = tl.where(karange[None, :] == j, vmax[:, None], w)
    if HAS_BIAS:  # the selection score carries the bias, the weight must not: one gather for all
        w = tl.gather(scores, tl.where(ids >= 0, ids, 0), axis=1)

    taken = karange[None, :] < TOP_K
    if USE_TOP_P:
        before = tl.cumsum(w, axis=1) - w
        taken = taken & (before < top_p)
    w = tl.where(taken, w, 0.0)
    if RENORM:
        w = w / (tl.sum(w, axis=1)[:, None] + 1e-20)
    w = w * scaling
    # Slots of experts outside this shard's [local_lo, local_lo + local_n) cost nothing here.
    null = (ids >= E_REAL) | (~taken) | (ids < local_lo) | (ids >= local_lo + local_n)
    ids = tl.where(null, -1, ids - local_lo)
    w = tl.where(null, 0.0, w)
    return rows, karange, ids, w


@triton.jit
def _route_kernel(
    logits_ptr, bias_ptr, ids_ptr, w_ptr, T, C, E_REAL, stride_t, top_p, scaling, local_lo, local_n,
    TOP_K: tl.constexpr, K_PAD: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
    SIGMOID: tl.constexpr, HAS_BIAS: tl.constexpr, RENORM: tl.constexpr,
    N_GROUPS: tl.constexpr, TOPK_GROUPS: tl.constexpr, G_PAD: tl.constexpr,
    GROUP_SIZE: tl.constexpr, MOGE_GROUPS: tl.constexpr, USE_TOP_P: tl.constexpr,
):
    rows, karange, ids, w = _route_block(
        logits_ptr, bias_ptr, T, C, E_REAL, stride_t, top_p, scaling, local_lo, local_n,
        tl.program_id(0),
        TOP_K, K_PAD, BLOCK_T, BLOCK_C, SIGMOID, HAS_BIAS, RENORM, N_GROUPS, TOPK_GROUPS, G_PAD,
        GROUP_SIZE, MOGE_GROUPS, USE_TOP_P,
    )
    offs = rows[:, None] * TOP_K + karange[None, :]
    mask = (rows < T)[:, None] & (karange < TOP_K)[None, :]
    tl.store(ids_ptr + offs, ids, mask=mask)
    tl.store(w_ptr + offs, w, mask=mask)


def route_meta(cfg: RoutingConfig, num_columns: int, has_bias: bool) -> dict:
    """Compile-time parameters shared by the routing kernels."""
    block_c = triton.next_power_of_2(num_columns)
    group = num_columns // cfg.n_groups
    # Groups as a [groups, size] view need the row to be exactly power-of-two groups.
    pow2_groups = cfg.n_groups > 1 and num_columns == block_c and group == triton.next_power_of_2(group)
    return dict(
        TOP_K=cfg.top_k, K_PAD=triton.next_power_of_2(cfg.top_k), BLOCK_C=block_c,
        SIGMOID=cfg.scoring == "sigmoid", HAS_BIAS=has_bias, RENORM=cfg.renormalize,
        N_GROUPS=cfg.n_groups, TOPK_GROUPS=cfg.topk_groups,
        G_PAD=triton.next_power_of_2(max(cfg.n_groups, 2)), GROUP_SIZE=group if pow2_groups else 0,
        MOGE_GROUPS=cfg.moge_groups,
        USE_TOP_P=cfg.top_p is not None,
    )


def local_range(num_columns: int, local_experts: tuple[int, int] | None) -> tuple[int, int]:
    return local_experts if local_experts is not None else (0, num_columns)


def route(
    logits: torch.Tensor,
    cfg: RoutingConfig,
    bias: torch.Tensor | None = None,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
    local_experts: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Route `logits` [T, C] per `cfg`; returns (topk_ids [T, K] int32, topk_weights [T, K] fp32).

    Same function as `reference.route_reference` (then `reference.localize` when
    `local_experts` = (first, count) names an expert-parallel shard); no host synchronisation.
    """
    t, c = logits.shape
    cfg.validate(c)
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    if out is None:
        ids = torch.empty(t, cfg.top_k, dtype=torch.int32, device=logits.device)
        w = torch.empty(t, cfg.top_k, dtype=torch.float32, device=logits.device)
    else:
        ids, w = out
    meta = route_meta(cfg, c, bias is not None)
    # Keep the [BLOCK_T, BLOCK_C] tile around 4K fp32 values per program.
    block_t = max(1, min(64, 4096 // meta["BLOCK_C"], triton.next_power_of_2(max(t, 1))))
    if t:
        _route_kernel[(triton.cdiv(t, block_t),)](
            logits, bias if bias is not None else logits, ids, w, t, c,
            c - cfg.num_null_experts, logits.stride(0), float(cfg.top_p or 1.0),
            float(cfg.routed_scaling), *local_range(c, local_experts), BLOCK_T=block_t, num_warps=4,
            **meta,
        )
    return ids, w
