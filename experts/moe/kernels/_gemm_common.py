"""Helpers shared by the grouped GEMM kernels (`grouped_gemm`, `grouped_gemm_tma`, `decode`)."""

from __future__ import annotations

import os

import torch

from experts.moe.kernels._triton import tl, triton


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _pid_to_tile(pid, num_pid_m, N, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    # Grouped order: GROUP_M row blocks share each weight tile while it sits in L2.
    num_pid_n = tl.cdiv(N, BLOCK_N)
    in_group = GROUP_M * num_pid_n
    first_m = (pid // in_group) * GROUP_M
    size_m = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % size_m
    pid_n = (pid % in_group) // size_m
    return pid_m, pid_n


def _precision(t: torch.Tensor) -> str:
    # float32 inputs get true fp32 products (the default would round them to tf32).
    return "ieee" if t.dtype == torch.float32 else "tf32"
