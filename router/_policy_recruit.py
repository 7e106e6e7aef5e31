"""From a predicted-quality matrix to a decision: recruit k experts, calibrate λ, vote.

Shared by the live router and the offline harness (skills/routing_eval.py), so the numbers the
harness reports are the numbers the router would produce.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from router._scoring import rank_experts, utility

if TYPE_CHECKING:
    from router.policies import RoutingPolicy

#: The cost-knob sweep: λ = 0 (quality only) up to λ large enough that the cheapest expert always
#: wins (quality lives in [0, 1], so λ·Δcost/max(cost) beats any quality gap once λ ≫ 1/Δ).
#: Dense (2% steps): on MMLU-Pro most queries change expert for λ in [0.1, 0.5], and a coarser
#: grid (145 points) left the curve up to 0.013 below what calibrated λs reach in between.
LAMBDA_GRID: np.ndarray = np.concatenate([[0.0], np.geomspace(1e-3, 1e3, 700)])


def recruit(quality: np.ndarray, cost: np.ndarray, lam: float, k: int = 1) -> np.ndarray:
    """Indices `[M, k]` of the `k` experts with the highest utility, best first."""
    if not 1 <= k <= quality.shape[1]:
        raise ValueError(f"k must be between 1 and the pool size {quality.shape[1]}, got {k}")
    return rank_experts(utility(quality, cost, lam))[:, :k]


def mean_cost(quality: np.ndarray, cost: np.ndarray, lam: float, k: int = 1) -> float:
    """Average per-query cost (sum over recruited experts) at knob `lam`."""
    chosen = recruit(quality, cost, lam, k)
    return float(np.asarray(cost, dtype=np.float64)[chosen].sum(axis=1).mean())


def calibrate_quality(
    quality: np.ndarray,
    cost: np.ndarray,
    target_cost_fraction: float,
    reference_cost: float | None = None,
    k: int = 1,
    lam_max: float = 1e3,
) -> float:
    """The smallest λ whose average cost on `quality`'s queries is <= target · reference_cost.

    The smallest such λ buys the most quality within the budget. Average cost only falls as λ
    grows, so bisection finds it; an unreachable budget returns `lam_max` (cheapest experts).
    `reference_cost` defaults to the most expensive expert's cost.
    """
    cost = np.asarray(cost, dtype=np.float64)
    budget = target_cost_fraction * (
        float(cost.max()) if reference_cost is None else reference_cost
    )
    if mean_cost(quality, cost, 0.0, k) <= budget:
        return 0.0
    lo, hi = 0.0, lam_max
    if mean_cost(quality, cost, hi, k) > budget:
        return lam_max
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if mean_cost(quality, cost, mid, k) <= budget:
            hi = mid
        else:
            lo = mid
    return hi


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


def competence_weights(quality: np.ndarray, n_choices: int = 10) -> np.ndarray:
    """Vote weights from predicted P(correct): the log-odds of being right vs one wrong option.

    For independent voters choosing among `n_choices` answers, weighting each by
    `log(q · (n_choices - 1) / (1 - q))` is the optimal weighted majority (Nitzan & Paroush,
    1982). Weights are floored at a small positive value so a recruited expert still counts.
    """
    q = np.clip(np.asarray(quality, dtype=np.float64), 1e-3, 1 - 1e-3)
    return np.maximum(np.log(q * (n_choices - 1) / (1.0 - q)), 1e-3)


def vote(answers: Sequence[str | None], weights: Sequence[float]) -> str | None:
    """Weighted plurality of the experts' answers; `None` answers abstain.

    Ties go to the answer backed by the earliest-listed expert (pass experts best first), so the
    result is deterministic. Returns None only when every expert abstained.
    """
    if len(answers) != len(weights):
        raise ValueError(f"got {len(answers)} answers but {len(weights)} weights")
    score: dict[str, float] = {}
    first: dict[str, int] = {}
    for i, (answer, weight) in enumerate(zip(answers, weights, strict=True)):
        if answer is None:
            continue
        score[answer] = score.get(answer, 0.0) + float(weight)
        first.setdefault(answer, i)
    if not score:
        return None
    return max(score, key=lambda a: (score[a], -first[a]))
