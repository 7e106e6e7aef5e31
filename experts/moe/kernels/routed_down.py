"""Decode path after `routed_gate_up`: a `down` whose first programs pull their weight tiles into L2
while gate/up is still finishing.

With PDL, `down`'s programs become resident as gate/up's last wave leaves the SMs, and each waits
(`gdc_wait`) for gate/up to end before it reads h: in that tail fewer loads are in flight than the
memory can serve. What a `down` program reads besides h, its W2 tile, depends only on its block's
expert, and in the layout by slot block p is slot p, whose expert the routing names. So with
`"PREFETCH": n` in the down entry, programs f..f+n-1 (f = "PREFETCH_FROM", default 0; the
hardware makes programs resident in order, so a larger f prefetches later in the tail) route
their slot's token (`routing._route_block` on that one row) before the wait and issue
`prefetch.global.L2` for every 128-byte line of their tile; after the wait they run as
`grouped_gemm._down_kernel` does, and their loads find those lines in L2. With `"EVICT_LAST":
true` the prefetched lines are kept over gate/up's streamed ones.

A prefetch changes no value. A slot whose expert an earlier slot leads has an empty block, and its
programs prefetch the lead's tile, which is then in L2 already. Triton's interpreter runs the
routing but not the prefetch (inline PTX). `tune_routed --which prefetch` sets n only where the
whole layer is measured faster.
"""

from __future__ import annotations

import torch

from experts.moe.kernels._gemm_common import _interpret, _pid_to_tile, _precision
from experts.moe.kernels._triton import gdc_launch_dependents, gdc_wait, tl, triton
from experts.moe.kernels.grouped_gemm import _down_gemm, _launch
from experts.moe.kernels.reference import RoutingConfig
from experts.moe.kernels.routing import _route_block, local_range, route_meta

LINE_BYTES = 128  # one L2 prefetch per line


@triton.jit
def _slot_expert(
    p, logits_ptr, bias_ptr, T, C, E_REAL, stride_lt, top_p, scaling, local_lo, local_n,
    TOP_K: tl.constexpr, K_PAD: tl.constexpr, BLOCK_C: tl.constexpr,
    SIGMOID: tl.constexpr, HAS_BIAS: tl.constexpr, RENORM: tl.constexpr,
    N_GROUPS: tl.constexpr, TOPK_GROUPS: tl.constexpr, G_PAD: tl.constexpr,
    GROUP_SIZE: tl.constexpr, MOGE_GROUPS: tl.constexpr, USE_TOP_P: tl.constexpr,
):
    """Slot p's expert (token p // TOP_K's (p % TOP_K)-th choice), local to the shard; -1 if null."""
    _, karange, ids, _ = _route_block(
        logits_ptr, bias_ptr, T, C, E_REAL, stride_lt, top_p, scaling, local_lo, local_n,
        p // TOP_K, TOP_K, K_PAD, 1, BLOCK_C, SIGMOID, HAS_BIAS, RENORM, N_GROUPS, TOPK_GROUPS,
        G_PAD, GROUP_SIZE, MOGE_GROUPS, USE_TOP_P,
    )
    return tl.sum(tl.where(karange[None, :] == p % TOP_K, ids, 0))


@triton.jit
def _prefetch_l2(ptrs, EVICT_LAST: tl.constexpr):
    """Ask L2 for the line at each pointer (no registers written, nothing waited for); with
    EVICT_LAST the lines are the last L2 evicts, so gate/up's stream does not push them out."""
    if EVICT_LAST:
        tl.inline_asm_elementwise("prefetch.global.L2::evict_last [$1]; mov.u32 $0, 0;", "=r,l",
                                  [ptrs], dtype=tl.int32, is_pure=False, pack=1)
    else:
        tl.inline_asm_elementwise("prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l", [ptrs],
                                  dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _down_prefetch_kernel(
    h_ptr, w_ptr, y_ptr, weights_ptr, sorted_ids_ptr, block_expert_ptr, num_padded_ptr,
    logits_ptr, bias_ptr, T, C, E_REAL, stride_lt, top_p, scaling, local_lo, local_n,
    M, N, K, num_pid_m, stride_hm, stride_we, stride_wn, stride_ym,
    TOP_K: tl.constexpr, K_PAD: tl.constexpr, BLOCK_C: tl.constexpr,
    SIGMOID: tl.constexpr, HAS_BIAS: tl.constexpr, RENORM: tl.constexpr,
    N_GROUPS: tl.constexpr, TOPK_GROUPS: tl.constexpr, G_PAD: tl.constexpr,
    GROUP_SIZE: tl.constexpr, MOGE_GROUPS: tl.constexpr, USE_TOP_P: tl.constexpr,
    PREFETCH: tl.constexpr, PREFETCH_FROM: tl.constexpr, EVICT_LAST: tl.constexpr,
    LINE: tl.constexpr, LINES: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, PDL: tl.constexpr,
):
    pid_m, pid_n = _pid_to_tile(tl.program_id(0), num_pid_m, N, BLOCK_N, GROUP_M)
    pid = tl.program_id(0)
    if (pid >= PREFETCH_FROM) & (pid < PREFETCH_FROM + PREFETCH):  # before the wait: W2 to L2
        pex = _slot_expert(pid_m, logits_ptr, bias_ptr, T, C, E_REAL, stride_lt, top_p, scaling,
                           local_lo, local_n, TOP_K, K_PAD, BLOCK_C, SIGMOID, HAS_BIAS, RENORM,
                           N_GROUPS, TOPK_GROUPS, G_PAD, GROUP_SIZE, MOGE_GROUPS, USE_TOP_P)
        if pex >= 0:
            offs_n = tl.minimum(pid_n * BLOCK_N + tl.arange(0, BLOCK_N), N - 1)
            offs_k = tl.minimum(tl.arange(0, LINES) * LINE, K - 1)
            if not UPCAST:  # the interpreter has no inline PTX
                _prefetch_l2(w_ptr + pex.to(tl.int64) * stride_we + offs_n[:, None] * stride_wn
                             + offs_k[None, :], EVICT_LAST)
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
        return
    ex = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    if ex < 0:  # an empty block: an earlier slot leads its expert
        return
    _down_gemm(h_ptr, w_ptr, y_ptr, weights_ptr, sorted_ids_ptr, ex, pid_m, pid_n, M, N, K,
               stride_hm, stride_we, stride_wn, stride_ym, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K,
               UPCAST, PRECISION)


def down_prefetched(
    h: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor, sorted_ids: torch.Tensor,
    block_expert: torch.Tensor, num_padded: torch.Tensor, cfg: dict, logits: torch.Tensor,
    routing: RoutingConfig, bias: torch.Tensor | None = None,
    local_experts: tuple[int, int] | None = None,
) -> torch.Tensor:
    """`grouped_gemm.down` on `routed_gate_up`'s layout by slot, with the first `cfg["PREFETCH"]`
    programs prefetching their W2 tile before they wait (meant for a PDL launch). Same result."""
    p, k = h.shape
    n = w2.shape[1]
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    c = logits.shape[1]
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    y = torch.empty(p, n, dtype=h.dtype, device=h.device)
    num_pid_m = p // bm
    line = max(1, LINE_BYTES // w2.element_size())
    _down_prefetch_kernel[(num_pid_m * triton.cdiv(n, bn),)](
        h, w2, y, topk_weights, sorted_ids, block_expert, num_padded,
        logits, bias if bias is not None else logits, logits.shape[0], c,
        c - routing.num_null_experts, logits.stride(0), float(routing.top_p or 1.0),
        float(routing.routed_scaling), *local_range(c, local_experts),
        topk_weights.numel(), n, k, num_pid_m, h.stride(0), w2.stride(0), w2.stride(1), y.stride(0),
        PREFETCH=int(cfg.get("PREFETCH", 0)), PREFETCH_FROM=int(cfg.get("PREFETCH_FROM", 0)),
        EVICT_LAST=bool(cfg.get("EVICT_LAST")), LINE=line,
        LINES=triton.next_power_of_2(triton.cdiv(k, line)),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=cfg["BLOCK_K"], GROUP_M=cfg["GROUP_M"],
        EVEN_K=k % cfg["BLOCK_K"] == 0, UPCAST=_interpret(), PRECISION=_precision(h),
        PDL=bool(cfg.get("PDL")), **route_meta(routing, c, bias is not None), **_launch(cfg),
    )
    return y
