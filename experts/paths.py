"""Where Quorum keeps what it materialises (models, embeddings, batches), and the environment every
process that loads a model runs with."""

from __future__ import annotations

import os
from pathlib import Path

#: No hub downloads, ever: models come from Quorum's own folders (the processes Quorum starts, its
#: Ray actors and engine processes, all get these).
OFFLINE_ENV: dict[str, str] = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def quorum_home() -> Path:
    """`$QUORUM_HOME`, default ~/.cache/quorum."""
    return Path(os.environ.get("QUORUM_HOME") or Path.home() / ".cache" / "quorum")


def go_offline() -> None:
    """Set `OFFLINE_ENV` in this process, keeping values the user set."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
