"""experts.moe.fused: Quorum's layer on vLLM's fused-MoE arguments, against vLLM's routing.

The layer object is a stand-in with the attributes vLLM's RoutedExperts has (no vLLM needed);
the expected output routes the way vLLM's routers do (written out below from vLLM 0.32's
grouped_topk / fused_topk / fused_topk_bias: plain top-k ignores routed_scaling_factor, group
scores are the best two biased scores when a correction bias is present) and runs the float32
per-expert reference. When vLLM is importable its own CPU router is checked against that too.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from experts.moe import fused
from experts.moe.kernels.reference import TOLERANCE, experts_reference, rel_err


def _vllm_routing(logits, top_k, renormalize, scoring, groups=None, topk_group=None,
                  scaling=1.0, bias=None):  # fmt: skip
    scores = logits.float().softmax(-1) if scoring == "softmax" else logits.float().sigmoid()
    choice = scores if bias is None else scores + bias.float()
    if groups:
        t = scores.shape[0]
        if bias is not None:
            gs = choice.view(t, groups, -1).topk(2, dim=-1)[0].sum(-1)
        else:
            gs = choice.view(t, groups, -1).max(-1).values
        keep = torch.zeros_like(gs).scatter_(1, gs.topk(topk_group, dim=-1)[1], 1).bool()
        choice = choice.masked_fill(~keep.repeat_interleave(scores.shape[1] // groups, 1), -1e30)
    ids = choice.topk(top_k, dim=-1)[1]
    w = scores.gather(1, ids)
    if renormalize:
        w = w / w.sum(-1, keepdim=True)
    if groups or bias is not None:  # vLLM's plain top-k routers never scale
        w = w * scaling
    return ids.int(), w


def _layer(e=8, h=64, inter=32, dtype=torch.float32, device="cpu", **routing):
    g = torch.Generator().manual_seed(0)
    w13 = (torch.randn(e, 2 * inter, h, generator=g) * 0.1).to(device, dtype)
    w2 = (torch.randn(e, h, inter, generator=g) * 0.1).to(device, dtype)
    base = dict(top_k=2, renormalize=True, scoring_func="softmax", use_grouped_topk=False,
                num_expert_group=None, topk_group=None, routed_scaling_factor=1.0,
                e_score_correction_bias=None, custom_routing_function=None,
                apply_router_weight_on_input=False, expert_map=None, moe_config=None)  # fmt: skip
    return SimpleNamespace(w13_weight=w13, w2_weight=w2, **(base | routing))


CASES = {
    "mixtral: softmax top-2, renormalised": dict(),
    "qwen3: softmax top-2, scaling ignored": dict(renormalize=False, routed_scaling_factor=2.5),
    "deepseek-v3: sigmoid, 4 of 16 from 2 of 4 groups, bias, scaling": dict(
        e=16,
        top_k=4,
        scoring_func="sigmoid",
        use_grouped_topk=True,
        num_expert_group=4,
        topk_group=2,
        routed_scaling_factor=2.5,
        bias=True,
    ),
    "sigmoid top-2 with bias, not renormalised": dict(
        scoring_func="sigmoid", renormalize=False, routed_scaling_factor=1.5, bias=True
    ),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("t", [3, 80])  # fused route+align launch / separate route and align
def test_forward_matches_vllm_routing_then_reference_experts(name, t, device):
    case = dict(CASES[name])
    with_bias = case.pop("bias", False)
    layer = _layer(device=device, **case)
    e = layer.w13_weight.shape[0]
    if with_bias:
        layer.e_score_correction_bias = torch.linspace(-0.2, 0.3, e, device=device)
    assert fused.unsupported_reason(layer) is None
    x = torch.randn(t, 64, device=device)
    logits = torch.randn(t, e, device=device)
    before = fused.CALLS.value

    out = fused.fused_moe_forward(layer, x, logits, fused.routing_config(layer))

    ids, w = _vllm_routing(
        logits, layer.top_k, layer.renormalize, layer.scoring_func, layer.num_expert_group,
        layer.topk_group, layer.routed_scaling_factor, layer.e_score_correction_bias,
    )  # fmt: skip
    ref = experts_reference(x, layer.w13_weight, layer.w2_weight, ids, w)
    assert rel_err(out, ref) < TOLERANCE[torch.float32]
    assert fused.CALLS.value == before + 1


def test_the_reference_above_is_vllms_cpu_router():
    pytest.importorskip("vllm")
    from vllm.model_executor.layers.fused_moe.router.cpu_router import select_experts

    logits = torch.randn(40, 16)
    bias = torch.linspace(-0.2, 0.3, 16)
    for kw in (dict(top_k=2, renormalize=True, scoring="softmax"),
               dict(top_k=2, renormalize=False, scoring="softmax"),
               dict(top_k=4, renormalize=True, scoring="sigmoid", groups=4, topk_group=2,
                    scaling=2.5, bias=bias)):  # fmt: skip
        ids, w = _vllm_routing(logits, **kw)
        w_v, ids_v = select_experts(
            logits, logits, top_k=kw["top_k"], use_grouped_topk="groups" in kw,
            renormalize=kw["renormalize"], topk_group=kw.get("topk_group"),
            num_expert_group=kw.get("groups"), scoring_func=kw["scoring"],
            routed_scaling_factor=kw.get("scaling", 1.0), e_score_correction_bias=kw.get("bias"),
        )  # fmt: skip
        order, order_v = ids.sort(-1), ids_v.sort(-1)
        assert torch.equal(order.values, order_v.values)
        assert torch.allclose(w.gather(1, order.indices), w_v.gather(1, order_v.indices), atol=1e-6)


def _moe_config(**over):
    par = SimpleNamespace(use_ep=False, enable_eplb=False, dp_size=1, pcp_size=1)
    base = dict(activation=SimpleNamespace(value="silu"), is_act_and_mul=True,
                is_lora_enabled=False, has_bias=False, has_hash_routing=False,
                moe_parallel_config=par, num_experts=8, num_logical_experts=8)  # fmt: skip
    for key, value in over.items():
        if hasattr(par, key):
            setattr(par, key, value)
        else:
            base[key] = value
    return SimpleNamespace(**base)


@pytest.mark.parametrize(
    ("config", "layer", "says"),
    [
        (dict(activation=SimpleNamespace(value="gelu")), {}, "activation 'gelu'"),
        (dict(is_lora_enabled=True), {}, "LoRA"),
        (dict(use_ep=True), {}, "expert parallelism"),
        (dict(dp_size=2), {}, "data/context-parallel"),
        (dict(has_bias=True), {}, "bias terms"),
        (dict(num_experts=9), {}, "redundant or fused shared experts"),
        ({}, dict(expert_map=torch.arange(8)), "expert map"),
        ({}, dict(custom_routing_function=lambda **kw: None), "custom routing"),
        ({}, dict(scoring_func="sqrtsoftplus"), "scoring function 'sqrtsoftplus'"),
        (
            {},
            dict(use_grouped_topk=True, num_expert_group=4, topk_group=2),
            "without a correction bias",
        ),
        ({}, dict(apply_router_weight_on_input=True), "apply_router_weight_on_input"),
        ({}, dict(top_k=9), "routing settings"),
    ],
)
def test_unsupported_layers_name_the_reason(config, layer, says):
    lay = _layer(**layer)
    lay.moe_config = _moe_config(**config)
    assert says in fused.unsupported_reason(lay)


def test_quantized_weights_and_cpu_without_interpreter_are_refused(monkeypatch):
    lay = _layer()
    lay.w13_weight = lay.w13_weight.to(torch.int8)
    assert "dtype torch.int8" in fused.unsupported_reason(lay)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "TRITON_INTERPRET" in fused.unsupported_reason(_layer())
