from __future__ import annotations

import pytest
import torch

from experts.moe.kernels.reference import (
    TOLERANCE,
    RoutingConfig,
    experts_reference,
    rel_err,
    route_reference,
)
from experts.moe.layer import MoELayer

ROUTINGS = {
    "topk": (RoutingConfig(top_k=2, renormalize=True), False),
    "deepseek": (
        RoutingConfig(top_k=3, scoring="sigmoid", renormalize=True, n_groups=4, topk_groups=2,
                      routed_scaling=2.5),
        True,
    ),
    "null_top_p": (RoutingConfig(top_k=3, num_null_experts=2, top_p=0.8), False),
    "moge": (RoutingConfig(top_k=4, moge_groups=2, renormalize=True), False),
}


@pytest.mark.parametrize("name", list(ROUTINGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layer_matches_reference(name, dtype, device: torch.device) -> None:
    routing, with_bias = ROUTINGS[name]
    torch.manual_seed(0)
    layer = MoELayer(32, 16, 8, routing, dtype=dtype, with_bias=with_bias).to(device)
    if with_bias:
        layer.bias.normal_(std=0.1)
    x = torch.randn(2, 5, 32, dtype=dtype, device=device)
    out = layer(x)
    xf = x.reshape(-1, 32)
    # Same logits as the layer (bf16 matmul) so that the routing decisions are identical.
    logits = torch.nn.functional.linear(xf, layer.router_weight)
    ids, w = route_reference(logits, routing, layer.bias)
    ref = experts_reference(xf.cpu().float(), layer.gate_up_proj.detach().cpu().float(),
                            layer.down_proj.detach().cpu().float(), ids.cpu(), w.cpu())
    assert out.shape == x.shape
    assert rel_err(out.reshape(-1, 32).detach().cpu(), ref) < TOLERANCE[dtype]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_layer_captures_in_cuda_graph() -> None:
    torch.manual_seed(0)
    layer = MoELayer(256, 128, 16, RoutingConfig(top_k=4, renormalize=True)).cuda()
    x = torch.randn(8, 256, dtype=torch.bfloat16, device="cuda")
    with torch.no_grad():
        eager = layer(x)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            layer(x)  # warm-up compiles outside the capture
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = layer(x)
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(captured, layer(x))
        assert not torch.equal(captured, eager)


def _gpu_problem(t: int, e: int = 64, h: int = 512, inter: int = 256) -> tuple:
    """Top-8 of 64 experts on the GPU: (routing, x, logits, w13, w2), seeded."""
    torch.manual_seed(0)
    x = torch.randn(t, h, dtype=torch.bfloat16, device="cuda")
    logits = torch.randn(t, e, device="cuda")
    w13 = torch.randn(e, 2 * inter, h, dtype=torch.bfloat16, device="cuda") / h**0.5
    w2 = torch.randn(e, h, inter, dtype=torch.bfloat16, device="cuda") / inter**0.5
    return RoutingConfig(top_k=8, renormalize=True), x, logits, w13, w2


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
                    reason="programmatic dependent launch needs a Hopper or newer GPU")
@pytest.mark.parametrize("t", [8, 64])
def test_pdl_launches_give_the_same_output_eager_and_in_a_graph(t: int) -> None:
    """`"PDL": true` only changes when the aligned path's kernels may start: same bits as without,
    launched eagerly and replayed from a CUDA graph (T=8 takes route_align, T=64 route + align)."""
    from experts.moe.kernels.configs import get_config
    from experts.moe.layer import moe_from_logits

    routing, x, logits, w13, w2 = _gpu_problem(t)
    e, h, inter = w13.shape[0], w13.shape[2], w2.shape[2]
    cfg = {k: v for k, v in get_config(t, e, h, inter, 8, x.device).items() if k != "decode"}
    with torch.no_grad():
        plain = moe_from_logits(x, logits, w13, w2, routing, config=cfg)
        pdl_cfg = cfg | {"PDL": True}
        assert torch.equal(moe_from_logits(x, logits, w13, w2, routing, config=pdl_cfg), plain)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = moe_from_logits(x, logits, w13, w2, routing, config=pdl_cfg)
        for _ in range(3):
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(captured, plain)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
                    reason="programmatic dependent launch needs a Hopper or newer GPU")
@pytest.mark.parametrize("layout", ["SLOT_LAYOUT", "ROUTE_IN_GEMM", "PREFETCH"])
@pytest.mark.parametrize("t", [1, 8])
def test_slot_layout_with_pdl_replays_from_a_graph(t: int, layout: str) -> None:
    """The layouts by slot (route_align's, and the gate/up GEMM's own, with and without `down`'s
    prefetch) with PDL, replayed from a CUDA graph with fresh inputs: within tolerance of the
    reference every time."""
    from experts.moe.layer import moe_from_logits

    routing, x, logits, w13, w2 = _gpu_problem(t)
    gemm = dict(BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=3)
    cfg = dict(BLOCK_M=16, gate_up=gemm, down=gemm, PDL=True)
    if layout == "PREFETCH":
        cfg |= dict(ROUTE_IN_GEMM=True, down=gemm | {"PREFETCH": 256})
    else:
        cfg[layout] = True

    def reference() -> torch.Tensor:
        ids, w = route_reference(logits, routing)
        return experts_reference(x.cpu().float(), w13.cpu().float(), w2.cpu().float(),
                                 ids.cpu(), w.cpu())

    with torch.no_grad():
        moe_from_logits(x, logits, w13, w2, routing, config=cfg)  # compile outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = moe_from_logits(x, logits, w13, w2, routing, config=cfg)
        for seed in range(4):
            g = torch.Generator(device="cuda").manual_seed(seed)
            x.copy_(torch.randn(x.shape, generator=g, device="cuda"))
            logits.copy_(torch.randn(logits.shape, generator=g, device="cuda"))
            graph.replay()
            torch.cuda.synchronize()
            assert rel_err(captured.cpu(), reference()) < TOLERANCE[torch.bfloat16]
