"""Token-level sparse MoE: the routing layer that runs *inside* a hosted MoE model.

One layer call, on Triton kernels (`experts.moe.kernels`):

    routing (top-k over router logits) -> permutation / alignment of the routed slots into
    per-expert row blocks -> grouped GEMM (gate/up + SwiGLU, then down) -> combine in token order

with a plain-PyTorch reference of every step (`experts.moe.kernels.reference`) that the tests
(tests/kernels) and benchmarks (benchmarks/kernels) check against.

- `experts.moe.layer`: the layer (`MoELayer`, `moe_forward`, `moe_from_logits`, `moe_experts`).
- `experts.moe.patch`: `patch_moe` swaps a transformers model's sparse MoE blocks for this layer.
- `experts.moe.kernels`: the kernels, their tuned tile configs (kernels/configs/*.json) and the
  references.

Not to be confused with the model-level "experts" of the rest of the `experts` package: those
are whole LLMs (registry, engines) that Quorum routes requests between; the experts here are
the FFN sub-networks of one MoE model, chosen per token.

Names are loaded on first use (PEP 562): `import experts.moe` needs neither torch nor triton.
"""

from __future__ import annotations

from experts import lazy_facade

_LAZY = {
    "MoELayer": "experts.moe.layer",
    "moe_experts": "experts.moe.layer",
    "moe_forward": "experts.moe.layer",
    "moe_from_logits": "experts.moe.layer",
    "TritonSparseMoeBlock": "experts.moe.patch",
    "patch_moe": "experts.moe.patch",
    "RoutingConfig": "experts.moe.kernels.reference",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_facade(__name__, _LAZY)
