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
