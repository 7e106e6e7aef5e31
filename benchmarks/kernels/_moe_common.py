"""Shapes, inputs, baselines and roofline helpers shared by the MoE benchmark and tuner."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import torch

from experts.moe.kernels.reference import RoutingConfig, route_reference


@dataclass(frozen=True)
class MoEShape:
    """One benchmarked layer. `local` = (first, count) of a shard's experts, None = all."""

    e: int
    top_k: int
    h: int
    inter: int
    routing: RoutingConfig
    fp32_router: bool = False
    local: tuple[int, int] | None = None
    with_bias: bool = False
    tags: tuple[str, ...] = field(default=())

    @property
    def local_e(self) -> int:
        return self.local[1] if self.local else self.e


_DSV3 = RoutingConfig(top_k=8, scoring="sigmoid", renormalize=True, n_groups=8, topk_groups=4,
                      routed_scaling=2.5)
SHAPES: dict[str, MoEShape] = {
    "mixtral-8x7b": MoEShape(8, 2, 4096, 14336, RoutingConfig(top_k=2, renormalize=True)),
    "mixtral-8x7b-tp2": MoEShape(8, 2, 4096, 7168, RoutingConfig(top_k=2, renormalize=True)),
    "qwen3-30b-a3b": MoEShape(128, 8, 2048, 768, RoutingConfig(top_k=8, renormalize=True)),
    "deepseek-v3": MoEShape(256, 8, 7168, 2048, _DSV3, fp32_router=True, with_bias=True),
    "deepseek-v3-32exp": MoEShape(256, 8, 7168, 2048, _DSV3, fp32_router=True, with_bias=True,
                                  local=(0, 32)),
    "olmoe-1b-7b": MoEShape(64, 8, 2048, 1024, RoutingConfig(top_k=8)),
}
TOKENS = (1, 8, 64, 512, 4096, 16384)


@dataclass
class Params:
    router: torch.Tensor  # [E, H]
    w13: torch.Tensor  # [E_local, 2I, H]
    w2: torch.Tensor  # [E_local, H, I]
    bias: torch.Tensor | None  # [E] fp32
    skew: torch.Tensor | None  # [E] logit offset in the router's dtype; None = uniform routing


def buckets(names, tokens):
    """(shape name, T, its config-table key `configs.shape_key`) for every shape of `names` and
    every T of `tokens`: the cases a tuner walks."""
    from experts.moe.kernels.configs import shape_key

    for name in names:
        s = SHAPES[name]
        for t in tokens:
            yield name, t, shape_key(s.local_e, s.h, s.inter, s.top_k)


def table_entry(table: dict, name: str, t: int, key: str, device: torch.device) -> dict:
    """A tuner's entry for shape `name` at T in its copy of the table (`key` from `buckets`):
    the one there, else the config the layer would take now (`configs.get_config`), added."""
    from experts.moe.kernels.configs import get_config

    s = SHAPES[name]
    return table.setdefault(key, {}).setdefault(
        str(t), get_config(t, s.local_e, s.h, s.inter, s.top_k, device))


def skew_offsets(router: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """Zipf-like expert popularity for `router` [E, H]: logit offset -1.5 * log(1 + rank), ranks in
    random order, on the router's device and in its dtype (`logits_of` adds them as its bias)."""
    g = torch.Generator().manual_seed(seed)
    offsets = -1.5 * torch.log1p(torch.randperm(router.shape[0], generator=g).float())
    return offsets.to(router.device, router.dtype)


def make_params(shape: MoEShape, skewed: bool, device: torch.device, seed: int = 0) -> Params:
    g = torch.Generator(device="cpu").manual_seed(seed)
    el = shape.local_e
    rdt = torch.float32 if shape.fp32_router else torch.bfloat16
    router = (torch.randn(shape.e, shape.h, generator=g) * 0.02).to(device, rdt)
    w13 = torch.empty(el, 2 * shape.inter, shape.h, dtype=torch.bfloat16, device=device)
    w2 = torch.empty(el, shape.h, shape.inter, dtype=torch.bfloat16, device=device)
    w13.normal_(std=shape.h**-0.5)
    w2.normal_(std=shape.inter**-0.5)
    bias = (torch.randn(shape.e, generator=g) * 0.01).to(device) if shape.with_bias else None
    skew = skew_offsets(router) if skewed else None
    return Params(router, w13, w2, bias, skew)


def logits_of(x: torch.Tensor, shape: MoEShape, p: Params) -> torch.Tensor:
    """The router GEMM [T, E]; skewed routing adds its offsets as the GEMM's bias (one cuBLAS call,
    not two more elementwise kernels that no model runs)."""
    xr = x.float() if shape.fp32_router else x
    return torch.nn.functional.linear(xr, p.router, p.skew)


def to_local(ids: torch.Tensor, shape: MoEShape) -> torch.Tensor:
    """Global expert ids -> this shard's ids; experts of other shards become null (-1)."""
    if shape.local is None:
        return ids
    lo, n = shape.local
    return torch.where((ids >= lo) & (ids < lo + n), ids - lo, -1)


def eager_loop_layer(x: torch.Tensor, shape: MoEShape, p: Params) -> torch.Tensor:
    """transformers' eager experts: a Python loop over the experts that received tokens."""
    ids, w = route_reference(logits_of(x, shape, p), shape.routing, p.bias)
    ids = to_local(ids, shape).long()
    el = p.w13.shape[0]
    out = torch.zeros_like(x)
    mask = torch.nn.functional.one_hot(torch.where(ids < 0, el, ids), el + 1).permute(2, 1, 0)
    hit = (mask.sum(dim=(-1, -2)) > 0).nonzero()
    for ex in hit.flatten().tolist():
        if ex == el:
            continue
        slot, tok = torch.where(mask[ex])
        gate, up = torch.nn.functional.linear(x[tok], p.w13[ex]).chunk(2, dim=-1)
        y = torch.nn.functional.linear(torch.nn.functional.silu(gate) * up, p.w2[ex])
        out.index_add_(0, tok, (y * w[tok, slot, None]).to(x.dtype))
    return out


def grouped_mm_layer(
    x: torch.Tensor, shape: MoEShape, p: Params, logits: torch.Tensor | None = None
) -> torch.Tensor:
    """torch._grouped_mm over a permuted copy of the routed rows, scatter-add combine
    (`logits`: given router logits instead of the router GEMM)."""
    logits = logits_of(x, shape, p) if logits is None else logits
    ids, w = route_reference(logits, shape.routing, p.bias)
    ids = to_local(ids, shape)
    t, k = ids.shape
    el = p.w13.shape[0]
    flat = ids.reshape(-1)
    key = torch.where(flat >= 0, flat, el)
    order = key.argsort(stable=True)  # [M]
    counts = torch.zeros(el + 1, dtype=torch.int32, device=x.device)
    counts.scatter_add_(0, key, torch.ones_like(key, dtype=torch.int32))
    offs = counts[:el].cumsum(0).to(torch.int32)
    tok = order // k
    xs = x[tok]  # [M, H]
    hu = torch._grouped_mm(xs, p.w13.transpose(1, 2), offs=offs)  # [M, 2I]
    act = torch.nn.functional.silu(hu[:, : shape.inter]) * hu[:, shape.inter :]
    y = torch._grouped_mm(act, p.w2.transpose(1, 2), offs=offs)  # [M, H]
    valid = (key[order] < el)[:, None]
    y = torch.where(valid, y.float() * w.reshape(-1)[order, None], 0.0)
    return torch.zeros(t, shape.h, device=x.device).index_add_(0, tok, y).to(x.dtype)


def triton_layer(x: torch.Tensor, shape: MoEShape, p: Params, config: dict | None = None):
    """The Quorum layer: Triton routing, alignment, grouped GEMMs and combine."""
    from experts.moe.layer import moe_from_logits

    return moe_from_logits(x, logits_of(x, shape, p), p.w13, p.w2, shape.routing, p.bias, config,
                           shape.local)


def work(x: torch.Tensor, shape: MoEShape, p: Params) -> tuple[float, float, dict]:
    """(FLOPs, fewest bytes, routing stats) of one layer call on `x`."""
    ids, _ = route_reference(logits_of(x, shape, p), shape.routing, p.bias)
    ids = to_local(ids, shape)
    t = x.shape[0]
    active = int((ids >= 0).sum())
    per_expert = torch.bincount(ids[ids >= 0].long(), minlength=shape.local_e)
    touched = int((per_expert > 0).sum())
    flops = 2.0 * active * 3 * shape.h * shape.inter + 2.0 * t * shape.h * shape.e
    rbytes = 4 if shape.fp32_router else 2
    nbytes = (touched * 3 * shape.h * shape.inter * 2 + shape.e * shape.h * rbytes
              + 2 * t * shape.h * 2)
    stats = dict(active=active, touched=touched,
                 max_share=float(per_expert.max()) / max(active, 1))
    return flops, float(nbytes), stats


def measure_ceilings(device: torch.device) -> tuple[float, float]:
    """(copy bytes/s counting read + write, bf16 matmul FLOP/s) measured on random data."""
    import triton.testing

    n = 1 << 30  # bytes per buffer, 20x the L2
    src = torch.empty(n // 2, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    t_copy = triton.testing.do_bench(partial(dst.copy_, src), warmup=50, rep=300,
                                     return_mode="median") * 1e-3
    src = dst = None
    m = 8192
    x = torch.randn(m, m, dtype=torch.bfloat16, device=device)
    y = torch.randn(m, m, dtype=torch.bfloat16, device=device)
    t_mm = triton.testing.do_bench(lambda: x @ y, warmup=100, rep=500,
                                   return_mode="median") * 1e-3
    return 2 * n / t_copy, 2 * m**3 / t_mm


def in_order(*steps) -> None:
    """Run `steps` one after another: several timed steps as one callable (one graph capture)."""
    for step in steps:
        step()


def fmt_us(s: float) -> str:
    return "-" if s is None or math.isnan(s) else f"{s * 1e6:,.0f}" if s > 1e-4 else f"{s * 1e6:.1f}"
