"""Sparse MoE layer on the Triton kernels of `experts.moe.kernels`.

    [Router] logits -> route() -> [Dispatch] align() -> [Experts] gate_up() + down()
    -> [Combine] combine()

At decode, where the tuned config for the bucket has a "decode" entry, the whole chain after the
router GEMM is one launch instead (`experts.moe.kernels.decode`: routing, both GEMMs and an atomic
combine in one kernel; it removes the gaps between dependent launches), or with "STAGED": true in
that entry one launch of ordered gate/up and down work items (`experts.moe.kernels.staged`).
With "ROUTE_IN_GEMM" the gate/up GEMM routes its own tokens instead of a routing launch before it
(`experts.moe.kernels.routed_gate_up`), and there a down entry's "PREFETCH" has `down`'s first
programs pull their weight tiles into L2 while gate/up finishes (`experts.moe.kernels.routed_down`).

No step waits on the host: every buffer size follows from (T, E, top_k, BLOCK_M), so the layer
can be captured in a CUDA graph (decode latency is mostly launch overhead otherwise).
"""

from __future__ import annotations

import torch
from torch import nn

from experts.moe.kernels.reference import RoutingConfig


def _config(x: torch.Tensor, w13: torch.Tensor, top_k: int, config: dict | None) -> dict:
    from experts.moe.kernels.configs import get_config

    e, two_i, h = w13.shape
    return config or get_config(x.shape[0], e, h, two_i // 2, top_k, x.device)


def _layer_flags(cfg: dict) -> dict:
    return {"BLOCK_M": cfg["BLOCK_M"], "PDL": cfg.get("PDL", False)}


def _down_combine(
    hid: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
    layout: tuple[torch.Tensor, ...], t: int, top_k: int, cfg: dict, routed: tuple = (),
) -> torch.Tensor:
    """`down`, then `combine`. `routed` = (logits, routing, bias, local_experts) for the layout by
    slot of `routed_gate_up`, where a down entry's "PREFETCH" applies (`routed_down`)."""
    from experts.moe.kernels.grouped_gemm import combine, down

    sorted_ids, block_expert, num_padded, slot_pos = layout
    bm = _layer_flags(cfg)
    args = (hid, w2, topk_weights.reshape(-1), sorted_ids, block_expert, num_padded,
            cfg["down"] | bm)
    if routed and cfg["down"].get("PREFETCH"):
        from experts.moe.kernels.routed_down import down_prefetched

        y = down_prefetched(*args, *routed)  # [P, H]
    else:
        y = down(*args)  # [P, H]
    return combine(y, slot_pos, t, top_k, pdl=bm["PDL"])  # [T, H]


def _experts_aligned(
    x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
    layout: tuple[torch.Tensor, ...], cfg: dict,
) -> torch.Tensor:
    from experts.moe.kernels.grouped_gemm import gate_up

    sorted_ids, block_expert, num_padded, _ = layout
    t, top_k = topk_weights.shape
    hid = gate_up(x, w13, sorted_ids, block_expert, num_padded, top_k,
                  cfg["gate_up"] | _layer_flags(cfg))  # [P, I]
    return _down_combine(hid, w2, topk_weights, layout, t, top_k, cfg)


def _routes_in_gemm(num_tokens: int, cfg: dict) -> bool:
    """Whether a config's "ROUTE_IN_GEMM" applies (`experts.moe.kernels.routed_gate_up`)."""
    return bool(cfg.get("ROUTE_IN_GEMM")) and num_tokens <= cfg["BLOCK_M"]


def _decode_path(cfg: dict):
    """The one-launch function a "decode" entry asks for."""
    if cfg.get("STAGED"):
        from experts.moe.kernels.staged import moe_staged

        return moe_staged
    from experts.moe.kernels.decode import moe_decode

    return moe_decode


def moe_experts(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    config: dict | None = None,
) -> torch.Tensor:
    """SwiGLU experts over already-routed slots, combined in token order.

    | arg          | shape      | dtype               |
    |--------------|------------|---------------------|
    | x            | [T, H]     | bf16 / fp16 / fp32  |
    | w13          | [E, 2I, H] | x.dtype             |
    | w2           | [E, H, I]  | x.dtype             |
    | topk_ids     | [T, K]     | int32, -1 = null    |
    | topk_weights | [T, K]     | fp32                |
    returns [T, H] in x.dtype.
    """
    from experts.moe.kernels.align import align
    from experts.moe.kernels.decode import MAX_DECODE_TOKENS

    x = x.contiguous()
    cfg = _config(x, w13, topk_ids.shape[1], config)
    if cfg.get("decode") and x.shape[0] <= MAX_DECODE_TOKENS:
        return _decode_path(cfg["decode"])(x, w13, w2, topk_ids=topk_ids,
                                           topk_weights=topk_weights, config=cfg["decode"])
    layout = align(topk_ids, w13.shape[0], cfg["BLOCK_M"])
    return _experts_aligned(x, w13, w2, topk_weights, layout, cfg)


def moe_from_logits(
    x: torch.Tensor,
    logits: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    routing: RoutingConfig,
    bias: torch.Tensor | None = None,
    config: dict | None = None,
    local_experts: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Route `logits` [T, C] and run the experts. `local_experts` = (first, count): this GPU
    holds only those experts (w13/w2 have `count` rows); other slots cost nothing here."""
    from experts.moe.kernels.align import align
    from experts.moe.kernels.decode import MAX_DECODE_TOKENS
    from experts.moe.kernels.route_align import MAX_FUSED_SLOTS, route_align
    from experts.moe.kernels.routing import route

    x = x.contiguous()
    e = w13.shape[0]
    cfg = _config(x, w13, routing.top_k, config)
    if cfg.get("decode") and x.shape[0] <= MAX_DECODE_TOKENS:  # one launch after the router
        return _decode_path(cfg["decode"])(x, w13, w2, logits=logits, routing=routing, bias=bias,
                                           local_experts=local_experts, config=cfg["decode"])
    if _routes_in_gemm(x.shape[0], cfg):  # decode: gate/up routes, no routing launch at all
        from experts.moe.kernels.routed_gate_up import gate_up_routed

        hid, wts, *layout = gate_up_routed(x, w13, logits, routing,
                                           cfg["gate_up"] | _layer_flags(cfg), bias, local_experts)
        return _down_combine(hid, w2, wts, tuple(layout), x.shape[0], routing.top_k, cfg,
                             (logits, routing, bias, local_experts))
    if x.shape[0] * routing.top_k <= MAX_FUSED_SLOTS:  # decode: one launch instead of four
        _, wts, *layout = route_align(logits, routing, e, cfg["BLOCK_M"], bias, local_experts,
                                      num_warps=cfg.get("ROUTE_WARPS"),
                                      slot_layout=cfg.get("SLOT_LAYOUT", False),
                                      pdl=cfg.get("PDL", False))
    else:
        ids, wts = route(logits, routing, bias, local_experts=local_experts)
        layout = align(ids, e, cfg["BLOCK_M"])
    return _experts_aligned(x, w13, w2, wts, tuple(layout), cfg)


def moe_forward(
    x: torch.Tensor,
    router_weight: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    routing: RoutingConfig,
    bias: torch.Tensor | None = None,
    config: dict | None = None,
) -> torch.Tensor:
    """The whole layer: logits = x @ router_weight.T [T, C], route, experts. x [T, H] -> [T, H]."""
    logits = nn.functional.linear(x.to(router_weight.dtype), router_weight)  # [T, C]
    return moe_from_logits(x, logits, w13, w2, routing, bias, config)


class MoELayer(nn.Module):
    """A sparse MoE layer (router + SwiGLU experts) running on the Triton kernels.

    Parameters use transformers' layout: `gate_up_proj` [E, 2I, H], `down_proj` [E, H, I],
    `router_weight` [E + null experts, H]; `bias` [E + null] is the selection-only correction.
    """

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        num_experts: int,
        routing: RoutingConfig,
        dtype: torch.dtype = torch.bfloat16,
        router_dtype: torch.dtype | None = None,
        with_bias: bool = False,
    ) -> None:
        super().__init__()
        self.routing = routing
        cols = num_experts + routing.num_null_experts
        self.router_weight = nn.Parameter(
            torch.empty(cols, hidden_size, dtype=router_dtype or dtype)
        )
        self.gate_up_proj = nn.Parameter(
            torch.empty(num_experts, 2 * intermediate_size, hidden_size, dtype=dtype)
        )
        self.down_proj = nn.Parameter(
            torch.empty(num_experts, hidden_size, intermediate_size, dtype=dtype)
        )
        self.bias: torch.Tensor | None
        self.register_buffer("bias", torch.zeros(cols) if with_bias else None)
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02) -> None:
        for p in (self.router_weight, self.gate_up_proj, self.down_proj):
            nn.init.normal_(p, std=std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        out = moe_forward(
            x.reshape(-1, shape[-1]), self.router_weight, self.gate_up_proj, self.down_proj,
            self.routing, self.bias,
        )
        return out.reshape(shape)
