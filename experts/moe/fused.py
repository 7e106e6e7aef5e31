"""Quorum's MoE layer behind vLLM's fused-MoE argument layout, without importing vLLM.

vLLM asks its unquantized fused-MoE method for `apply_monolithic(layer, x, router_logits)`, where
`layer` is vLLM's `RoutedExperts` module: it holds the weights vLLM loaded and the routing
settings of the model. `fused_moe_forward` runs Quorum's layer (`experts.moe.layer`) on exactly
those tensors, read in place (no copy):

| vLLM attribute                     | here                                               |
|------------------------------------|----------------------------------------------------|
| w13_weight [E, 2I, H]              | gate rows then up rows (vLLM's w1 then w3) -> w13  |
| w2_weight [E, H, I]                | down projection -> w2                              |
| top_k, renormalize, scoring_func   | RoutingConfig(top_k, scoring, renormalize)         |
| use_grouped_topk, num_expert_group,| n_groups, topk_groups (DeepSeek-V3: group score =  |
| topk_group, e_score_correction_bias| sum of the two best biased scores), selection bias |
| routed_scaling_factor              | routed_scaling, where vLLM's router applies it     |

`unsupported_reason(layer)` says why a layer must stay on vLLM's own kernels (None when Quorum's
layer computes the same function); `experts.moe.vllm_plugin` is the vLLM side. Kept free of vLLM
so that benchmarks/kernels/bench_plugin.py can time the wrapper on a GPU without vLLM installed.

`CALLS` counts, per process, the forward calls that ran Quorum's layer (Python-level calls:
under CUDA graphs a replay does not pass through Python and is not counted).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from experts.moe.kernels.reference import RoutingConfig
from experts.moe.layer import moe_from_logits

__all__ = ["CALLS", "fused_moe_forward", "routing_config", "stats", "unsupported_reason"]

_SCORING = ("softmax", "sigmoid")
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class _Counter:
    """A process-wide call counter, bumped from the thread running the model's forward (a plain
    increment: a lock or an import per call cost the wrapper 0.6-2.4 us on this project's CPU)."""

    def __init__(self) -> None:
        self.value = 0

    def tick(self) -> None:
        self.value += 1


CALLS = _Counter()
#: Layers handed to Quorum's layer / left on vLLM's path (with why), in this process.
LAYERS: dict[str, int] = {"quorum": 0}
FALLBACKS: dict[str, int] = {}


def stats() -> dict[str, Any]:
    """What this process ran: forward calls on Quorum's layer, layers taken, fallback reasons."""
    return {"calls": CALLS.value, "layers": LAYERS["quorum"], "fallbacks": dict(FALLBACKS)}


def _uses_grouping(layer: Any) -> bool:
    groups = getattr(layer, "num_expert_group", None) or 1
    return bool(getattr(layer, "use_grouped_topk", False)) and groups > 1


def routing_config(layer: Any) -> RoutingConfig:
    """The routing vLLM's router would apply for `layer`, as Quorum's RoutingConfig.

    vLLM's plain top-k routers ignore `routed_scaling_factor` (a model that wants it has the
    runner scale the output); its grouped top-k and biased top-k routers multiply the weights.
    """
    grouped = _uses_grouping(layer)
    bias = getattr(layer, "e_score_correction_bias", None)
    scaled = bool(getattr(layer, "use_grouped_topk", False)) or bias is not None
    return RoutingConfig(
        top_k=int(layer.top_k),
        scoring=layer.scoring_func,
        renormalize=bool(layer.renormalize),
        n_groups=int(layer.num_expert_group) if grouped else 1,
        topk_groups=int(layer.topk_group) if grouped else 1,
        routed_scaling=float(layer.routed_scaling_factor) if scaled else 1.0,
    )


def _routing_reason(layer: Any) -> str | None:
    if getattr(layer, "custom_routing_function", None) is not None:
        return "the model routes with a custom routing function"
    if layer.scoring_func not in _SCORING:
        return f"scoring function {layer.scoring_func!r} (Quorum routes softmax or sigmoid)"
    if _uses_grouping(layer) and getattr(layer, "e_score_correction_bias", None) is None:
        return ("group-limited top-k without a correction bias (vLLM scores a group by its best "
                "expert; Quorum's router by its best two, DeepSeek-V3 style)")  # fmt: skip
    if getattr(layer, "apply_router_weight_on_input", False):
        return "router weights applied to the input (apply_router_weight_on_input)"
    try:
        routing_config(layer).validate(int(layer.w13_weight.shape[0]))
    except ValueError as exc:
        return f"routing settings: {exc}"
    return None


def _config_reason(moe: Any) -> str | None:
    """Reasons found on vLLM's FusedMoEConfig (read by attribute name; None when absent)."""
    activation = getattr(getattr(moe, "activation", None), "value", "silu")
    if activation != "silu" or not getattr(moe, "is_act_and_mul", True):
        return f"activation {activation!r} (Quorum's experts are SwiGLU: silu(gate) * up)"
    if getattr(moe, "is_lora_enabled", False):
        return "LoRA is enabled on the experts"
    if getattr(moe, "has_bias", False):
        return "the experts have bias terms"
    if any(getattr(moe, f"swiglu_{k}", None) is not None for k in ("limit", "alpha", "beta")):
        return "a clamped/scaled SwiGLU (swiglu_limit/alpha/beta)"
    if getattr(moe, "has_hash_routing", False):
        return "hash routing"
    par = getattr(moe, "moe_parallel_config", None)
    if par is not None and (par.use_ep or par.enable_eplb):
        return "expert parallelism across processes (use_ep / EPLB)"
    if par is not None and (par.dp_size > 1 or par.pcp_size > 1):
        return "data/context-parallel MoE (dp_size or pcp_size > 1)"
    if getattr(moe, "num_experts", 0) != getattr(moe, "num_logical_experts", 0):
        return "redundant or fused shared experts in the routed set"
    return None


def unsupported_reason(layer: Any) -> str | None:
    """Why `layer` (vLLM's RoutedExperts, or any object with its attributes) must stay on vLLM's
    kernels, or None when Quorum's layer computes what vLLM would."""
    reason = _config_reason(getattr(layer, "moe_config", None))
    if reason:
        return reason
    if getattr(layer, "expert_map", None) is not None:
        return "an expert map (this process holds a subset of the experts)"
    w13, w2 = layer.w13_weight, layer.w2_weight
    if w13.dtype not in _DTYPES or w2.dtype != w13.dtype:
        return f"weights of dtype {w13.dtype} (quantized or not float)"
    if w13.dim() != 3 or w2.dim() != 3 or w13.shape[1] != 2 * w2.shape[2]:
        return f"weight shapes w13 {tuple(w13.shape)}, w2 {tuple(w2.shape)} (not [E, 2I, H], [E, H, I])"
    if w13.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "CPU weights without TRITON_INTERPRET=1 (Triton compiles for GPUs only)"
    return _routing_reason(layer)


def fused_moe_forward(
    layer: Any, x: torch.Tensor, router_logits: torch.Tensor, routing: RoutingConfig
) -> torch.Tensor:
    """Quorum's layer on vLLM's arguments: x [T, H], router_logits [T, E] -> [T, H] in x.dtype.

    `routing` is `routing_config(layer)`, computed once per layer by the caller.
    """
    CALLS.tick()
    return moe_from_logits(x, router_logits, layer.w13_weight, layer.w2_weight, routing,
                           layer.e_score_correction_bias)  # fmt: skip
