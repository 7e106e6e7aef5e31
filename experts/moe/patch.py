"""Swap transformers' sparse MoE blocks for the Triton MoE layer.

Supported blocks (transformers >= 5, experts stored as `gate_up_proj` [E, 2I, H] and
`down_proj` [E, H, I]): Mixtral, Qwen3-MoE, OLMoE and DeepSeek-V3 (whose shared experts are kept
and added as before). The patched block shares the original parameters, so loading weights before
or after patching both work.

    model = AutoModelForCausalLM.from_pretrained(...)
    patch_moe(model)   # -> number of blocks replaced
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from experts.moe.kernels.reference import RoutingConfig

logger = logging.getLogger(__name__)


def _topk_softmax(renorm_attr: str | None) -> Callable[[object], RoutingConfig]:
    def build(config: object) -> RoutingConfig:
        renorm = True if renorm_attr is None else bool(getattr(config, renorm_attr))
        return RoutingConfig(top_k=config.num_experts_per_tok, renormalize=renorm)

    return build


def _deepseek_v3(config: object) -> RoutingConfig:
    return RoutingConfig(
        top_k=config.num_experts_per_tok, scoring="sigmoid", renormalize=config.norm_topk_prob,
        n_groups=config.n_group, topk_groups=config.topk_group,
        routed_scaling=config.routed_scaling_factor,
    )


# Block class name -> (routing built from the model config, router computes in float32).
SUPPORTED: dict[str, tuple[Callable[[object], RoutingConfig], bool]] = {
    "MixtralSparseMoeBlock": (_topk_softmax(None), False),
    "Qwen3MoeSparseMoeBlock": (_topk_softmax("norm_topk_prob"), False),
    "OlmoeSparseMoeBlock": (_topk_softmax("norm_topk_prob"), False),
    "DeepseekV3MoE": (_deepseek_v3, True),
}


class TritonSparseMoeBlock(nn.Module):
    """Drop-in forward for a transformers sparse MoE block: [B, S, H] -> [B, S, H]."""

    def __init__(self, block: nn.Module, routing: RoutingConfig, fp32_router: bool) -> None:
        super().__init__()
        self.gate = block.gate
        self.experts = block.experts
        self.shared_experts = getattr(block, "shared_experts", None)
        self.routing = routing
        self.fp32_router = fp32_router

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        from experts.moe.layer import moe_from_logits

        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])  # [T, H]
        if self.fp32_router:
            logits = nn.functional.linear(x.float(), self.gate.weight.float())  # [T, E]
        else:
            logits = nn.functional.linear(x, self.gate.weight)  # [T, E]
        bias = getattr(self.gate, "e_score_correction_bias", None)
        out = moe_from_logits(x, logits, self.experts.gate_up_proj, self.experts.down_proj,
                              self.routing, bias)
        out = out.reshape(shape)
        if self.shared_experts is not None:
            out = out + self.shared_experts(hidden_states)
        return out


def patch_moe(model: nn.Module) -> int:
    """Replace every supported sparse MoE block inside `model`; returns how many were replaced."""
    replaced = 0
    for name, module in list(model.named_modules()):
        entry = SUPPORTED.get(type(module).__name__)
        if entry is None:
            continue
        build, fp32_router = entry
        config = getattr(module, "config", None) or getattr(model, "config", None)
        act = getattr(config, "hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise ValueError(
                f"{name} ({type(module).__name__}) uses hidden_act={act!r}; the Triton experts "
                "implement SwiGLU (silu) only, so leave this model unpatched"
            )
        new = TritonSparseMoeBlock(module, build(config), fp32_router)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
        replaced += 1
    logger.info("patched %d sparse MoE blocks with the Triton MoE layer", replaced)
    return replaced
