"""The bundled MMLU-Pro dev data the skill head is trained on, and its fixed held-out fifth.

Shared by `router.train` (heads), `router.static_encoder` (its idf is counted on the training
rows only) and the benchmarks; `router.train` re-exports both functions.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from importlib import resources
from pathlib import Path

__all__ = ["BUNDLED_DATA", "is_held_out", "read_rows"]

BUNDLED_DATA = "mmlu_pro_dev.jsonl.gz"


def is_held_out(row_id: str, folds: int = 5) -> bool:
    """Deterministic split shared by training and benchmarks: 1 row in `folds` is held out."""
    return int(hashlib.sha1(row_id.encode()).hexdigest(), 16) % folds == 0


def read_rows(path: str | Path | None = None) -> list[dict]:
    """Rows with at least `id`, `prompt`, `category` (plain or gzipped JSONL); default: bundled."""
    if path is None:
        opened = resources.files("skills").joinpath("data", BUNDLED_DATA).open("rb")
        fh = gzip.open(opened, "rt")
    else:
        p = Path(path)
        fh = gzip.open(p, "rt") if p.suffix == ".gz" else p.open()
    rows = []
    with fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                rows.append(
                    {"id": str(row["id"]), "prompt": row["prompt"], "category": row["category"]}
                )
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(
                    f"{path}: line {lineno}: expected JSON with id, prompt, category ({exc})"
                ) from None
    return rows
