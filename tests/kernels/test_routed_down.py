"""`down` with its first programs prefetching their W2 tile (`routed_down`, a down entry's
"PREFETCH" on the ROUTE_IN_GEMM path): the layer's result is unchanged, and each slot's expert
that a prefetching program computes is the reference routing's."""

from __future__ import annotations

import pytest
import torch

from experts.moe.kernels._triton import tl, triton
from experts.moe.kernels.reference import TOLERANCE, rel_err
from experts.moe.kernels.routed_down import _slot_expert
from experts.moe.kernels.routing import local_range, route_meta
from experts.moe.layer import moe_from_logits
from tests.kernels._problems import decode_problem
from tests.kernels.test_routed_gate_up import CASES, GEMM


@triton.jit
def _slot_experts_kernel(
    out_ptr, logits_ptr, bias_ptr, T, C, E_REAL, stride_lt, top_p, scaling, local_lo, local_n,
    TOP_K: tl.constexpr, K_PAD: tl.constexpr, BLOCK_C: tl.constexpr,
    SIGMOID: tl.constexpr, HAS_BIAS: tl.constexpr, RENORM: tl.constexpr,
    N_GROUPS: tl.constexpr, TOPK_GROUPS: tl.constexpr, G_PAD: tl.constexpr,
    GROUP_SIZE: tl.constexpr, MOGE_GROUPS: tl.constexpr, USE_TOP_P: tl.constexpr,
):
    p = tl.program_id(0)
    ex = _slot_expert(p, logits_ptr, bias_ptr, T, C, E_REAL, stride_lt, top_p, scaling, local_lo,
                      local_n, TOP_K, K_PAD, BLOCK_C, SIGMOID, HAS_BIAS, RENORM, N_GROUPS,
                      TOPK_GROUPS, G_PAD, GROUP_SIZE, MOGE_GROUPS, USE_TOP_P)
    tl.store(out_ptr + p, ex)


@pytest.mark.parametrize("name", list(CASES))
def test_slot_expert_is_the_reference_routing(name, device: torch.device) -> None:
    routing, shard, *_, logits, bias, ids, _, _ = decode_problem(name, CASES[name],
                                                                 torch.float32, device)
    t, c = logits.shape
    out = torch.full((t * routing.top_k,), -7, dtype=torch.int32, device=device)
    _slot_experts_kernel[(out.numel(),)](
        out, logits, bias if bias is not None else logits, t, c, c - routing.num_null_experts,
        logits.stride(0), float(routing.top_p or 1.0), float(routing.routed_scaling),
        *local_range(c, shard), **route_meta(routing, c, bias is not None),
    )
    assert out.cpu().tolist() == ids.reshape(-1).cpu().tolist()


@pytest.mark.parametrize("prefetch", [1, 5, 10_000])
@pytest.mark.parametrize("name", ["decode_batch", "null_top_p", "qwen3_like", "deepseek_shard"])
def test_layer_with_prefetch_matches_reference(name, prefetch, device: torch.device) -> None:
    dtype = torch.bfloat16
    routing, shard, x, w13, w2, logits, bias, *_, ref = decode_problem(name, CASES[name], dtype,
                                                                      device)
    cfg = dict(BLOCK_M=16, gate_up=GEMM, down=GEMM | {"PREFETCH": prefetch}, ROUTE_IN_GEMM=True)
    out = moe_from_logits(x, logits, w13, w2, routing, bias, cfg, local_experts=shard)
    assert out.dtype == dtype and out.shape == x.shape
    assert rel_err(out.float().cpu(), ref) < TOLERANCE[dtype]
