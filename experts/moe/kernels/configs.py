"""Tile configs: tuned JSON per device name (configs/<device>.json), heuristic fallback.

A file maps "E=<experts>,H=<hidden>,I=<intermediate>,K=<top_k>" to {"<max T>": layer config};
the smallest bucket >= T wins. A layer config is
{"BLOCK_M": int, "gate_up": {BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages}, "down": {...}};
a GEMM entry with "TMA": true reads its tiles through tensor descriptors (`grouped_gemm_tma`).
Layer-level flags, each set only where it was measured faster: "decode" (the one-launch decode
kernel's tiles, or with "STAGED": true in it the staged kernel's, `staged`), "PDL" (programmatic dependent launches), "SLOT_LAYOUT" (route_align's layout
from the slots alone), "ROUTE_WARPS" (route_align's warp count) and "ROUTE_IN_GEMM" (no
route_align: the gate/up GEMM routes its own tokens, `routed_gate_up`; there the gate/up entry's
"RANKED": true has it route plain top-k by counting instead of K arg-max rounds).
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path

import torch

_DIR = Path(__file__).with_name("configs")


def device_key(device: torch.device) -> str:
    """File-name form of the device name ('NVIDIA H100 80GB HBM3' -> 'NVIDIA_H100_80GB_HBM3')."""
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^A-Za-z0-9]+", "_", torch.cuda.get_device_name(device)).strip("_")


def shape_key(e: int, h: int, inter: int, top_k: int) -> str:
    return f"E={e},H={h},I={inter},K={top_k}"


@functools.cache
def _load(device_name: str) -> dict:
    path = _DIR / f"{device_name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def tuned_table(device: torch.device | str) -> dict:
    """A copy of the checked-in table for `device` (or a file-name form of a device's name, like
    "NVIDIA_H200"; empty when there is none): what a tuner starts from and edits, leaving the
    cached one untouched."""
    name = device if isinstance(device, str) else device_key(device)
    return json.loads(json.dumps(_load(name)))


def _gemm(bn: int, bk: int, group_m: int, warps: int, stages: int) -> dict:
    return dict(BLOCK_N=bn, BLOCK_K=bk, GROUP_M=group_m, num_warps=warps, num_stages=stages)


def heuristic_config(num_tokens: int, e: int, top_k: int, interpret: bool) -> dict:
    """Fallback when no tuned entry exists; sized by the mean rows per expert."""
    if interpret:
        return dict(BLOCK_M=16, gate_up=_gemm(32, 32, 4, 4, 1), down=_gemm(32, 32, 4, 4, 1))
    rows = num_tokens * top_k / e
    if rows <= 16:
        return dict(BLOCK_M=16, gate_up=_gemm(64, 128, 8, 4, 4), down=_gemm(64, 128, 8, 4, 4))
    if rows <= 96:
        return dict(BLOCK_M=32, gate_up=_gemm(64, 128, 4, 4, 4), down=_gemm(128, 64, 4, 4, 4))
    if rows <= 512:
        return dict(BLOCK_M=64, gate_up=_gemm(128, 64, 8, 4, 4), down=_gemm(128, 64, 8, 4, 4))
    return dict(BLOCK_M=128, gate_up=_gemm(128, 64, 8, 8, 3), down=_gemm(128, 64, 8, 8, 4))


def get_config(
    num_tokens: int, e: int, h: int, inter: int, top_k: int, device: torch.device
) -> dict:
    """The tile config for one layer call: tuned entry for this device and shape, else heuristic."""
    interpret = os.environ.get("TRITON_INTERPRET") == "1" or device.type != "cuda"
    if not interpret:
        table = _load(device_key(device)).get(shape_key(e, h, inter, top_k))
        if table:
            buckets = sorted(int(b) for b in table)
            pick = next((b for b in buckets if b >= num_tokens), buckets[-1])
            return table[str(pick)]
    return heuristic_config(num_tokens, e, top_k, interpret)
