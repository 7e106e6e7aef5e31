"""Where a tuner writes this GPU's tile-config table: DIR/<device>.json, copied to
experts/moe/kernels/configs/ by hand, so nothing run on the GPU machine edits the package. Tuners start
from `experts.moe.kernels.configs.tuned_table`."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from experts.moe.kernels.configs import device_key


def write_table(table: dict, out: Path, dev: torch.device) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{device_key(dev)}.json"
    path.write_text(json.dumps(table, indent=1, sort_keys=True))
    return path
