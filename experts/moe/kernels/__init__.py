"""Triton kernels for the sparse MoE layer: route -> align -> gate_up -> down -> combine, and
for decode (T <= 16) `moe_decode` or `moe_staged`, all of it after the router GEMM in one launch.

The plain-PyTorch references (`experts.moe.kernels.reference`) import anywhere; the kernels need
Triton and are loaded on first use, so importing this package never requires it.
"""

from __future__ import annotations

import importlib
from typing import Any

from experts.moe.kernels.reference import (
    TOLERANCE,
    RoutingConfig,
    align_reference,
    experts_reference,
    moe_reference,
    route_reference,
)

_LAZY = {
    "route": "experts.moe.kernels.routing",
    "align": "experts.moe.kernels.align",
    "gate_up": "experts.moe.kernels.grouped_gemm",
    "down": "experts.moe.kernels.grouped_gemm",
    "combine": "experts.moe.kernels.grouped_gemm",
    "get_config": "experts.moe.kernels.configs",
    "moe_decode": "experts.moe.kernels.decode",
    "moe_staged": "experts.moe.kernels.staged",
}

__all__ = [
    "TOLERANCE",
    "RoutingConfig",
    "align",
    "align_reference",
    "combine",
    "down",
    "experts_reference",
    "gate_up",
    "get_config",
    "moe_decode",
    "moe_reference",
    "moe_staged",
    "route",
    "route_reference",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'experts.moe.kernels' has no attribute {name!r}")
