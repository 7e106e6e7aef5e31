"""The arithmetic of recruitment, shared by the live router and the offline routing harness.

Every policy ends in a matrix of predicted quality `[N, E]` (probability that expert e answers
query n well). Recruitment turns it into a choice with one cost knob, λ:

    utility[n, e] = quality[n, e] - λ · cost[e] / max(cost)

so λ is "how many points of quality the pool's most expensive expert must buy back".
"""

from __future__ import annotations

import numpy as np


def expected_quality(skill_probs: np.ndarray, competence: np.ndarray) -> np.ndarray:
    """Symbolic-MoE style local competence: `quality[n, e] = Σ_s p[n, s] · competence[e, s]`.

    | arg         | shape  | meaning                                  |
    |-------------|--------|------------------------------------------|
    | skill_probs | [N, S] | rows sum to 1                            |
    | competence  | [E, S] | P(correct) of expert e on skill s        |
    | returns     | [N, E] |                                          |
    """
    return np.asarray(skill_probs, dtype=np.float64) @ np.asarray(competence, dtype=np.float64).T


def utility(quality: np.ndarray, cost: np.ndarray, lam: float) -> np.ndarray:
    """Quality minus λ times cost relative to the most expensive expert. `[N, E]`."""
    cost = np.asarray(cost, dtype=np.float64)  # [E]
    scale = float(cost.max()) if cost.size and cost.max() > 0 else 1.0
    return np.asarray(quality, dtype=np.float64) - lam * (cost / scale)[None, :]


def rank_experts(util: np.ndarray) -> np.ndarray:
    """Expert indices per query, best first; ties go to the lower index (deterministic). `[N, E]`."""
    return np.argsort(-util, axis=1, kind="stable")
