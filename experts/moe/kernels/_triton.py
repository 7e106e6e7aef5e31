"""Guarded Triton import: the kernels need it, the rest of `experts` must not."""

from __future__ import annotations

try:
    import triton
    import triton.language as tl
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError as exc:  # pragma: no cover - exercised only on machines without triton
    raise ImportError(
        "experts.moe.kernels needs Triton: install it with `pip install triton` (it ships with the "
        "CUDA builds of PyTorch); on CPU-only machines run kernels with TRITON_INTERPRET=1"
    ) from exc

__all__ = ["gdc_launch_dependents", "gdc_wait", "tl", "triton"]
