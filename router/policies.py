"""Routing policies: fitted on per-query outcomes, each predicts a quality matrix `[M, E]`.

A policy answers one question: "how likely is expert e to answer query n correctly?", from the
query's embedding. Choosing is not the policy's job: the live router and the offline harness both
turn the matrix into a choice through `router.recruit.utility` / `rank_experts` (one cost knob λ),
and, for k > 1 experts, through `vote` (experts/answers.py, the live vote's code).

| name        | prediction for query n, expert e                                               |
|-------------|--------------------------------------------------------------------------------|
| `centroid`  | competence of e on the skill clusters near n (nearest-centroid skills)         |
| `knn`       | e's accuracy on n's nearest training queries, shrunk toward e's global accuracy |
| `predictor` | a per-expert logistic-regression correctness predictor on the embedding       |
| `symbolic`  | Symbolic-MoE: skill-weighted local competence plus global competence           |

`correct` is `[N, E]`: a score in [0, 1] per query and expert (1/0 for right/wrong, a fraction
for partial credit such as a pass rate or a judge's score), NaN where the outcome is unknown.
Every policy fits fractional scores as they are and predicts the expected score; every fit masks
the unknown entries, so a missing outcome never counts as wrong. Default hyper-parameters were
chosen by 5-fold cross-fitting on the train half of the bundled MMLU-Pro dev split only
(benchmarks/RESULTS.md).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from router.classify import centroid_probs, unit_centroids
from router.recruit import LAMBDA_GRID, calibrate_quality, expected_quality, mean_cost, recruit

__all__ = [
    "LAMBDA_GRID",
    "POLICIES",
    "CentroidPolicy",
    "KNNPolicy",
    "PredictorPolicy",
    "RoutingPolicy",
    "SkillCentroids",
    "SymbolicPolicy",
    "calibrate",
    "calibrate_quality",
    "cross_fitted_quality",
    "make_policy",
    "mean_cost",
    "recruit",
]

log = logging.getLogger(__name__)


class RoutingPolicy(ABC):
    """Predicts, per query, the probability that each expert answers it correctly."""

    name: str = "policy"

    @abstractmethod
    def fit(
        self,
        embeddings: np.ndarray,
        correct: np.ndarray,
        categories: Sequence[str] | None = None,
    ) -> RoutingPolicy:
        """Fit on `embeddings [N, D]` and `correct [N, E]` (scores in [0, 1], NaN = unknown)."""

    @abstractmethod
    def predict_quality(self, embeddings: np.ndarray) -> np.ndarray:
        """`[M, E]` predicted probability of a correct answer (expected score), in [0, 1]."""


def _check_fit_inputs(embeddings: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    embeddings = np.asarray(embeddings, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if embeddings.ndim != 2 or correct.ndim != 2 or len(embeddings) != len(correct):
        raise ValueError(
            f"fit needs embeddings [N, D] and correct [N, E] with the same N; got "
            f"{embeddings.shape} and {correct.shape}"
        )
    if len(embeddings) == 0:
        raise ValueError("fit needs at least one training query")
    return embeddings, correct


def _global_accuracy(correct: np.ndarray) -> np.ndarray:
    """Masked mean per expert `[E]`; 0.5 for an expert with no known outcome."""
    known = ~np.isnan(correct)
    n = known.sum(axis=0)
    total = np.where(known, correct, 0.0).sum(axis=0)
    return np.where(n > 0, total / np.maximum(n, 1), 0.5)


def _shrunk_rates(
    weights: np.ndarray, correct: np.ndarray, prior: np.ndarray, strength: float
) -> np.ndarray:
    """Weighted masked accuracy shrunk toward `prior`: `(Σ w·y + s·prior) / (Σ w + s)`.

    weights `[G, N]` (group or query x training row), correct `[N, E]`, prior `[E]` -> `[G, E]`.
    """
    known = (~np.isnan(correct)).astype(np.float64)  # [N, E]
    y = np.where(np.isnan(correct), 0.0, correct)  # [N, E]
    hits = weights @ y  # [G, E]
    seen = weights @ known  # [G, E]
    return (hits + strength * prior[None, :]) / (seen + strength)


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class SkillCentroids:
    """A nearest-centroid skill classifier: one unit centroid per skill, softmax over cosines (the
    arithmetic of the classifier's `CentroidHead`, router/classify.py).

    Skills are the training categories when given, else k-means clusters of the embeddings.
    """

    def __init__(self, n_clusters: int = 0, temperature: float = 0.05, seed: int = 0) -> None:
        self.n_clusters = n_clusters
        self.temperature = temperature
        self.seed = seed
        self.skills: list[str] = []
        self.centroids = np.zeros((0, 0))

    def fit(
        self, embeddings: np.ndarray, categories: Sequence[str] | None = None
    ) -> SkillCentroids:
        """Fit centroids; returns self. Training labels `[N]` as skill indices are in `labels_`."""
        x = _normalise(embeddings)
        if self.n_clusters > 0 or categories is None:
            from sklearn.cluster import KMeans

            n = min(self.n_clusters or 16, len(x))
            km = KMeans(n_clusters=n, n_init=3, random_state=self.seed).fit(x)
            labels = km.labels_
            self.skills = [f"cluster{i}" for i in range(n)]
        else:
            self.skills = sorted(set(categories))
            index = {s: i for i, s in enumerate(self.skills)}
            labels = np.array([index[c] for c in categories])
        self.centroids = unit_centroids(x, labels, len(self.skills))
        self.labels_ = labels
        return self

    def probs(self, embeddings: np.ndarray, top: int = 0) -> np.ndarray:
        """`[M, S]` skill probabilities; with `top` > 0 only the `top` likeliest skills keep mass."""
        return centroid_probs(_normalise(embeddings), self.centroids, self.temperature, top)


def _one_hot(labels: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n, len(labels)))
    out[labels, np.arange(len(labels))] = 1.0
    return out  # [S, N]


class CentroidPolicy(RoutingPolicy):
    """Nearest-centroid skills with per-skill competence.

    Skills are k-means clusters of the training embeddings (`n_clusters`), or the categories when
    `n_clusters=0`. Competence[e, s] is e's accuracy on skill s, shrunk toward e's global accuracy
    by `strength` pseudo-queries; a query's quality is competence under its soft skill assignment.
    """

    name = "centroid"

    def __init__(self, n_clusters: int = 32, temperature: float = 0.02, strength: float = 10.0):
        self.skills = SkillCentroids(n_clusters=n_clusters, temperature=temperature)
        self.strength = strength
        self.competence = np.zeros((0, 0))

    def fit(self, embeddings, correct, categories=None):
        embeddings, correct = _check_fit_inputs(embeddings, correct)
        self.skills.fit(embeddings, categories)
        groups = _one_hot(self.skills.labels_, len(self.skills.skills))  # [S, N]
        rates = _shrunk_rates(groups, correct, _global_accuracy(correct), self.strength)
        self.competence = rates.T  # [E, S]
        return self

    def predict_quality(self, embeddings):
        return expected_quality(self.skills.probs(embeddings), self.competence)


class KNNPolicy(RoutingPolicy):
    """Accuracy of each expert on the query's `k` nearest training queries (cosine).

    Neighbours are weighted by `exp(cos / temperature)`; the estimate is shrunk toward the expert's
    global accuracy by `strength` pseudo-neighbours, so thin neighbourhoods stay sensible.
    """

    name = "knn"

    def __init__(self, k: int = 512, temperature: float = 0.1, strength: float = 4.0):
        self.k = k
        self.temperature = temperature
        self.strength = strength

    def fit(self, embeddings, correct, categories=None):
        embeddings, correct = _check_fit_inputs(embeddings, correct)
        self._x = _normalise(embeddings).astype(np.float32)
        self._correct = correct
        self._prior = _global_accuracy(correct)
        return self

    def predict_quality(self, embeddings):
        q = _normalise(embeddings).astype(np.float32)
        k = min(self.k, len(self._x))
        out = np.empty((len(q), self._correct.shape[1]))
        for start in range(0, len(q), 1024):  # bounds the [chunk, N] similarity matrix
            sims = q[start : start + 1024] @ self._x.T  # [C, N]
            idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # [C, k]
            top = np.take_along_axis(sims, idx, axis=1).astype(np.float64)
            w = np.exp((top - top.max(axis=1, keepdims=True)) / self.temperature)  # [C, k]
            weights = np.zeros(sims.shape)
            np.put_along_axis(weights, idx, w / w.sum(axis=1, keepdims=True), axis=1)
            # Neighbour weights sum to 1 per query; scale so `strength` compares to k neighbours.
            out[start : start + 1024] = _shrunk_rates(
                weights * k, self._correct, self._prior, self.strength
            )
        return out


def _soft_logistic(model, x: np.ndarray, y: np.ndarray):
    """Fit a logistic regression to targets `y` in [0, 1]: every row as a positive weighted y and
    a negative weighted 1 - y (zero-weight copies dropped: 0/1 targets give the plain objective)."""
    pos, neg = y > 0, y < 1
    xx = np.vstack([x[pos], x[neg]])  # [P + Q, D]
    labels = np.concatenate([np.ones(pos.sum(), dtype=int), np.zeros(neg.sum(), dtype=int)])
    weights = np.concatenate([y[pos], 1.0 - y[neg]])
    return model.fit(xx, labels, sample_weight=weights)


class PredictorPolicy(RoutingPolicy):
    """A learned per-expert correctness predictor: logistic regression on the embedding.

    One L2-regularised model per expert, trained only on the queries whose outcome for that
    expert is known. Skill-centroid probabilities are appended as features (a cheap nonlinearity).
    A fractional score y is a soft label: the query enters twice, as a positive weighted y and
    a negative weighted 1 - y, which is the cross-entropy against y (`_soft_logistic`).
    """

    name = "predictor"

    def __init__(self, c: float = 0.1, n_clusters: int = 0, skill_temperature: float = 0.05):
        self.c = c
        self.skills = SkillCentroids(n_clusters=n_clusters, temperature=skill_temperature)

    def _features(self, embeddings: np.ndarray) -> np.ndarray:
        return np.hstack([_normalise(embeddings), self.skills.probs(embeddings)])

    def fit(self, embeddings, correct, categories=None):
        from sklearn.linear_model import LogisticRegression

        embeddings, correct = _check_fit_inputs(embeddings, correct)
        self.skills.fit(embeddings, categories)
        x = self._features(embeddings)
        self._models: list[LogisticRegression | float] = []
        for e in range(correct.shape[1]):
            known = ~np.isnan(correct[:, e])
            y = correct[known, e]
            if not ((y > 0).any() and (y < 1).any()):  # all 0 or all 1: predict the observed rate
                self._models.append(float(y.mean()) if len(y) else 0.5)
                continue
            self._models.append(
                _soft_logistic(LogisticRegression(C=self.c, max_iter=500), x[known], y)
            )
        return self

    def predict_quality(self, embeddings):
        x = self._features(embeddings)
        cols = [
            np.full(len(x), m) if isinstance(m, float) else m.predict_proba(x)[:, 1]
            for m in self._models
        ]
        return np.stack(cols, axis=1)


class SymbolicPolicy(RoutingPolicy):
    """The Symbolic-MoE skill-competence score (Chen et al., 2025, arXiv:2503.05641).

    Symbolic-MoE profiles each expert's competence per skill on validation data, scores a query's
    experts by the competence on the skills the query needs (local), and combines that with the
    expert's overall strength (global). Here the skills are the training categories, inferred for
    a query by a nearest-centroid classifier restricted to its `top_skills` likeliest skills:

        quality[n, e] = (1 - global_weight) · Σ_s p[n, s] · acc[e, s] + global_weight · acc[e]
    """

    name = "symbolic"

    def __init__(
        self,
        top_skills: int = 3,
        global_weight: float = 0.3,
        temperature: float = 0.03,
        strength: float = 5.0,
    ):
        self.top_skills = top_skills
        self.global_weight = global_weight
        self.strength = strength
        self.skills = SkillCentroids(n_clusters=0, temperature=temperature)

    def fit(self, embeddings, correct, categories=None):
        embeddings, correct = _check_fit_inputs(embeddings, correct)
        self.skills.fit(embeddings, categories)
        self.global_competence = _global_accuracy(correct)  # [E]
        groups = _one_hot(self.skills.labels_, len(self.skills.skills))  # [S, N]
        self.local_competence = _shrunk_rates(
            groups, correct, self.global_competence, self.strength
        ).T  # [E, S]
        return self

    def predict_quality(self, embeddings):
        local = expected_quality(
            self.skills.probs(embeddings, top=self.top_skills), self.local_competence
        )
        w = self.global_weight
        return (1.0 - w) * local + w * self.global_competence[None, :]


#: name -> policy class; each takes only keyword hyper-parameters with working defaults.
POLICIES: dict[str, type[RoutingPolicy]] = {
    "centroid": CentroidPolicy,
    "knn": KNNPolicy,
    "predictor": PredictorPolicy,
    "symbolic": SymbolicPolicy,
}


def make_policy(name: str, **params: object) -> RoutingPolicy:
    """A fresh, unfitted policy from the registry."""
    if name not in POLICIES:
        raise ValueError(
            f"unknown routing policy '{name}'; known policies are: {', '.join(POLICIES)}"
        )
    return POLICIES[name](**params)


def calibrate(
    policy: RoutingPolicy,
    embeddings: np.ndarray,
    cost: np.ndarray,
    target_cost_fraction: float,
    reference_cost: float | None = None,
    k: int = 1,
) -> float:
    """λ for a target cost on a set of queries (use queries the policy was not fitted to).

    In-sample predictions are over-confident; the harness therefore calibrates on cross-fitted
    (out-of-fold) training predictions through `calibrate_quality`.
    """
    quality = policy.predict_quality(embeddings)
    return calibrate_quality(quality, cost, target_cost_fraction, reference_cost, k)


def cross_fitted_quality(
    name: str,
    embeddings: np.ndarray,
    correct: np.ndarray,
    categories: Sequence[str],
    folds: int = 5,
    seed: int = 0,
    params: dict | None = None,
) -> np.ndarray:
    """`[N, E]` quality of each training row predicted by a policy fitted without its fold: honest
    calibration data (in-sample predictions are over-confident). Shared by `quorum eval-routing`
    and `quorum fit-policy`."""
    order = np.random.default_rng(seed).permutation(len(correct))
    quality = np.zeros(np.shape(correct))
    cats = np.asarray(categories)
    for part in np.array_split(order, folds):
        rest = np.setdiff1d(order, part)
        policy = make_policy(name, **(params or {})).fit(
            embeddings[rest], correct[rest], list(cats[rest])
        )
        quality[part] = policy.predict_quality(embeddings[part])
    return quality
