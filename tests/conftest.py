"""Shared test helpers: deterministic in-memory backends passed through constructors."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from router.classify import Encoder


class KeywordEncoder(Encoder):
    """A deterministic encoder: each word hashes to a fixed random unit vector; a text is the
    normalised sum of its words. Texts sharing words are close, which is all routing tests need."""

    name = "keyword-test-encoder"
    dim = 64

    def __init__(self) -> None:
        self.calls = 0

    def _word(self, word: str) -> np.ndarray:
        seed = int(hashlib.sha256(word.encode()).hexdigest()[:8], 16)
        return np.random.default_rng(seed).standard_normal(self.dim)

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            words = [w.strip(".,?!:;()").lower() for w in text.split()] or [""]
            vec = sum(self._word(w) for w in words)
            out[i] = vec / np.linalg.norm(vec)
        return out


@pytest.fixture
def keyword_encoder() -> KeywordEncoder:
    return KeywordEncoder()
