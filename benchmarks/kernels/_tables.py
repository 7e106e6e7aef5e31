"""This GPU's tile-config table as the tuners see it: the checked-in table to start from, and the one
place a tuned table is written (DIR/<device>.json; copy it to experts/moe/kernels/configs/ by hand,
so nothing run on the GPU machine edits the package)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from experts.moe.kernels.configs import _load, device_key


def checked_in_table(dev: torch.device) -> dict:
    """A deep copy of the checked-in table for `dev` (empty when there is none)."""
    return json.loads(json.dumps(_load(device_key(dev))))


def write_table(table: dict, out: Path, dev: torch.device) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{device_key(dev)}.json"
    path.write_text(json.dumps(table, indent=1, sort_keys=True))
    return path
