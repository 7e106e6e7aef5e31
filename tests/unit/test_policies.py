"""Routing policies, recruitment, calibration and voting on synthetic data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from experts.answers import competence_weights, vote
from router.policies import POLICIES, calibrate, calibrate_quality, make_policy, mean_cost, recruit

# Small, fast settings: the defaults are tuned for thousands of queries.
SMALL = {
    "centroid": {"n_clusters": 4},
    "knn": {"k": 8},
    "predictor": {"c": 10.0},
    "stacked": {"k": 8, "c": 1.0},
    "symbolic": {},
}


def two_skill_data(n: int = 80, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Queries in two tight clusters; expert 0 is right on 'alpha' only, expert 1 on 'beta' only."""
    rng = np.random.default_rng(seed)
    cats = ["alpha" if i % 2 == 0 else "beta" for i in range(n)]
    centre = {"alpha": np.eye(8)[0], "beta": np.eye(8)[1]}
    emb = np.stack([centre[c] + 0.1 * rng.normal(size=8) for c in cats])
    correct = np.array([[1.0, 0.0] if c == "alpha" else [0.0, 1.0] for c in cats])
    return emb, correct, cats


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_each_category_goes_to_the_expert_that_is_right_on_it(name: str) -> None:
    emb, correct, cats = two_skill_data()
    policy = make_policy(name, **SMALL[name]).fit(emb, correct, cats)
    test_emb, _, test_cats = two_skill_data(n=40, seed=1)
    quality = policy.predict_quality(test_emb)
    assert quality.shape == (40, 2)
    assert ((quality >= 0) & (quality <= 1)).all()
    chosen = recruit(quality, np.array([1.0, 1.0]), lam=0.0)[:, 0]
    assert list(chosen) == [0 if c == "alpha" else 1 for c in test_cats]


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_missing_outcomes_are_unknown_not_wrong(name: str) -> None:
    emb, correct, cats = two_skill_data()
    # Expert 0's outcome is unknown on most alpha queries (all of them right where known).
    hidden = correct.copy()
    alpha = np.flatnonzero(np.array(cats) == "alpha")
    hidden[alpha[: len(alpha) * 3 // 4], 0] = np.nan
    as_wrong = np.nan_to_num(hidden, nan=0.0)
    q_masked = make_policy(name, **SMALL[name]).fit(emb, hidden, cats).predict_quality(emb[alpha])
    q_wrong = make_policy(name, **SMALL[name]).fit(emb, as_wrong, cats).predict_quality(emb[alpha])
    # Masked: expert 0 still looks (near) perfect on alpha; counting unknowns as wrong drags it down.
    assert q_masked[:, 0].mean() > q_wrong[:, 0].mean() + 0.2
    assert (q_masked[:, 0] > q_masked[:, 1]).all()


def test_cost_knob_moves_queries_to_the_cheaper_expert() -> None:
    quality = np.array([[0.9, 0.8], [0.9, 0.3], [0.5, 0.45]])  # expert 0 better everywhere
    cost = np.array([10.0, 1.0])
    assert list(recruit(quality, cost, lam=0.0)[:, 0]) == [0, 0, 0]
    # λ = 0.2 buys back 0.2·(10-1)/10 = 0.18 points: queries 0 and 2 switch, query 1 does not.
    assert list(recruit(quality, cost, lam=0.2)[:, 0]) == [1, 0, 1]
    assert mean_cost(quality, cost, 0.0) == pytest.approx(10.0)
    assert mean_cost(quality, cost, 0.2) == pytest.approx(4.0)


def test_calibration_hits_the_budget_with_the_smallest_knob() -> None:
    rng = np.random.default_rng(0)
    quality = rng.uniform(size=(500, 4))
    cost = np.array([1.0, 5.0, 20.0, 70.0])
    assert mean_cost(quality, cost, 0.0) > 0.25 * 70.0  # so every target below binds
    for target in (0.05, 0.15, 0.25):
        lam = calibrate_quality(quality, cost, target, reference_cost=70.0)
        assert mean_cost(quality, cost, lam) <= target * 70.0
        # Minimal: a slightly smaller λ overspends (the budget binds).
        assert mean_cost(quality, cost, lam * 0.99) > target * 70.0
    # A budget the expensive expert already meets needs no cost pressure at all.
    assert calibrate_quality(quality, cost, 2.0, reference_cost=70.0) == 0.0


def test_calibrate_uses_the_policy_predictions() -> None:
    emb, correct, cats = two_skill_data()
    policy = make_policy("symbolic").fit(emb, correct, cats)
    cost = np.array([1.0, 4.0])
    lam = calibrate(policy, emb, cost, target_cost_fraction=0.5, reference_cost=4.0)
    assert mean_cost(policy.predict_quality(emb), cost, lam) <= 2.0
    assert lam > 0.0  # at λ = 0 half the queries go to the 4.0 expert: 2.5 > 2.0


def test_vote_is_a_weighted_plurality_with_abstentions() -> None:
    assert vote(["A", "B", "B"], [1.0, 0.4, 0.4]) == "A"
    assert vote(["A", "B", "B"], [1.0, 0.6, 0.6]) == "B"
    assert vote([None, "C", "D"], [5.0, 1.0, 2.0]) == "D"
    assert vote(["A", "B"], [1.0, 1.0]) == "A"  # tie: the first-listed (best-ranked) expert
    assert vote(["B", "A"], [1.0, 1.0]) == "B"
    assert vote([None, None], [1.0, 1.0]) is None
    with pytest.raises(ValueError, match="2 answers but 1 weights"):
        vote(["A", "B"], [1.0])


def test_competence_weights_grow_with_predicted_quality() -> None:
    w = competence_weights(np.array([0.05, 0.1, 0.2, 0.5, 0.9, 0.99]), n_choices=10)
    assert (np.diff(w[1:]) > 0).all()
    # At or below chance (1 in 10) an expert carries no information: the small positive floor.
    assert w[0] == w[1] == pytest.approx(1e-3)
    # Two 0.6 experts agreeing outvote one 0.8 expert; two 0.3 experts do not.
    hi, mid, low = competence_weights(np.array([0.8, 0.6, 0.3]))
    assert vote(["A", "B", "B"], [hi, mid, mid]) == "B"
    assert vote(["A", "B", "B"], [hi, low, low]) == "A"


def test_bad_arguments_say_what_is_allowed() -> None:
    with pytest.raises(ValueError, match="known policies are: centroid, knn"):
        make_policy("nearest")
    with pytest.raises(ValueError, match="k must be between 1 and the pool size 2"):
        recruit(np.zeros((3, 2)), np.ones(2), 0.0, k=3)
    with pytest.raises(ValueError, match="same N"):
        make_policy("knn").fit(np.zeros((3, 4)), np.zeros((2, 2)))
