"""Where a tuner writes this GPU's tile-config table: DIR/<device>.json, copied to
experts/moe/kernels/configs/ by hand, so nothing run on the GPU machine edits the package. Tuners start
from `experts.moe.kernels.configs.tuned_table`; `pick` is their rule for changing an entry."""

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


def pick(times: dict[str, float], incumbent: str, margin: float) -> str:
    """The fastest of `times` ({choice: seconds}) when it takes under `margin` x the incumbent's
    time, else the incumbent: a tie keeps what is checked in, so run-to-run noise cannot flip an
    entry back and forth between two choices of the same speed."""
    best = min(times, key=times.__getitem__)
    return best if times[best] < margin * times[incumbent] else incumbent
