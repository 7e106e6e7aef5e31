"""Where Quorum keeps what it materialises (models, embeddings): `$QUORUM_HOME`, default ~/.cache/quorum."""

from __future__ import annotations

import os
from pathlib import Path


def quorum_home() -> Path:
    return Path(os.environ.get("QUORUM_HOME") or Path.home() / ".cache" / "quorum")
