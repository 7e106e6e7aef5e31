"""The stacked routing policy (router/policies_stacked.py) on small synthetic data."""

from __future__ import annotations

import time

import numpy as np
import pytest

from router.artifact import load_policy, save_policy
from router.policies import POLICIES, make_policy, recruit
from router.policies_stacked import StackedPolicy, logistic_soft, ridge_loo


def clusters(n: int, seed: int, dim: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Two noisy clusters; returns (embeddings [n, dim], cluster label [n])."""
    rng = np.random.default_rng(seed)
    label = np.arange(n) % 2
    emb = np.eye(dim)[label] + 0.15 * rng.normal(size=(n, dim))
    return emb, label


def test_registered_under_its_name() -> None:
    assert POLICIES["stacked"] is StackedPolicy
    assert isinstance(make_policy("stacked", k=8), StackedPolicy)


def test_routes_each_cluster_to_the_expert_that_is_right_there() -> None:
    emb, label = clusters(200, seed=0)
    rng = np.random.default_rng(1)
    # Expert 0 is right 85% of the time on cluster 0 and 15% on cluster 1; expert 1 the reverse.
    p_right = np.where(label[:, None] == np.array([[0, 1]]), 0.85, 0.15)
    correct = (rng.uniform(size=p_right.shape) < p_right).astype(float)
    policy = StackedPolicy(k=16, c=1.0).fit(emb, correct)
    test_emb, test_label = clusters(60, seed=2)
    quality = policy.predict_quality(test_emb)
    assert quality.shape == (60, 2)
    assert ((quality > 0) & (quality < 1)).all()
    assert list(recruit(quality, np.ones(2), lam=0.0)[:, 0]) == list(test_label)


def test_soft_outcomes_are_predicted_as_rates() -> None:
    emb, label = clusters(300, seed=3)
    rng = np.random.default_rng(4)
    # Judge scores: expert 0 scores about 0.8 on cluster 0 and 0.3 on cluster 1; expert 1 ~0.5.
    correct = np.stack(
        [
            np.clip(np.where(label == 0, 0.8, 0.3) + 0.05 * rng.normal(size=300), 0, 1),
            np.clip(0.5 + 0.05 * rng.normal(size=300), 0, 1),
        ],
        axis=1,
    )
    quality = StackedPolicy(k=32, c=1.0).fit(emb, correct).predict_quality(emb)
    assert quality[label == 0, 0].mean() == pytest.approx(0.8, abs=0.05)
    assert quality[label == 1, 0].mean() == pytest.approx(0.3, abs=0.05)
    assert quality[:, 1].mean() == pytest.approx(0.5, abs=0.05)


def test_unknown_outcomes_are_masked_not_counted_wrong() -> None:
    emb, label = clusters(200, seed=5)
    correct = np.stack([np.ones(200), (label == 1).astype(float)], axis=1)
    hidden = correct.copy()
    hidden[:150, 0] = np.nan  # expert 0 is right wherever its outcome is known
    q_masked = StackedPolicy(k=16, c=1.0).fit(emb, hidden).predict_quality(emb)
    q_wrong = StackedPolicy(k=16, c=1.0).fit(emb, np.nan_to_num(hidden)).predict_quality(emb)
    assert q_masked[:, 0].mean() > 0.9
    assert q_masked[:, 0].mean() > q_wrong[:, 0].mean() + 0.3


def test_ridge_leave_one_out_matches_refitting_without_the_row() -> None:
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(40, 5)), rng.uniform(size=40)
    w, b, loo = ridge_loo(x, y[:, None], alpha=2.0)
    for i in (0, 17, 39):
        rest = np.arange(40) != i
        w_i, b_i, _ = ridge_loo(x[rest], y[rest, None], alpha=2.0)
        assert loo[i, 0] == pytest.approx((x[i] @ w_i + b_i)[0], abs=1e-9)
    # And the full fit is ordinary ridge with an unpenalised intercept.
    xc = x - x.mean(0)
    expected = np.linalg.solve(xc.T @ xc + 2.0 * np.eye(5), xc.T @ (y - y.mean()))
    np.testing.assert_allclose(w[:, 0], expected, atol=1e-10)
    assert b[0] == pytest.approx(y.mean() - x.mean(0) @ expected)


def test_soft_logistic_equals_plain_logistic_on_hard_labels() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(7)
    x = rng.normal(size=(100, 3))
    y = (x[:, 0] + rng.normal(size=100) > 0).astype(float)
    coef, intercept = logistic_soft(x, y, c=0.5)
    plain = LogisticRegression(C=0.5, tol=1e-10, max_iter=10000).fit(x, y.astype(int))
    np.testing.assert_allclose(coef, plain.coef_[0], atol=1e-4)
    assert intercept == pytest.approx(plain.intercept_[0], abs=1e-4)
    # Soft labels: the same fit as each row entered twice, as a 1 weighted y and a 0 weighted 1-y.
    soft = rng.uniform(size=100)
    coef, intercept = logistic_soft(x, soft, c=0.5)
    twice = LogisticRegression(C=0.5, tol=1e-10, max_iter=10000).fit(
        np.vstack([x, x]), np.repeat([1, 0], 100), sample_weight=np.concatenate([soft, 1 - soft])
    )
    np.testing.assert_allclose(coef, twice.coef_[0], atol=1e-4)
    # One label value only: no slope, the (clipped) rate's logit.
    coef, intercept = logistic_soft(x, np.ones(100), c=0.5)
    assert not coef.any() and 1 / (1 + np.exp(-intercept)) > 0.99


def test_knn_features_of_training_rows_leave_the_row_out() -> None:
    emb, _ = clusters(30, seed=8)
    correct = np.random.default_rng(9).integers(0, 2, size=(30, 2)).astype(float)
    policy = StackedPolicy(k=5).fit(emb, correct)
    loo = policy._knn(policy.x, exclude_self=True)
    for i in (0, 11, 29):
        rest = np.arange(30) != i
        alone = StackedPolicy(k=5).fit(emb[rest], correct[rest])
        # Same neighbours and weights; only the shrinkage prior differs (it is the fit's mean).
        alone.prior = policy.prior
        np.testing.assert_allclose(loo[i], alone._knn(policy.x[i : i + 1])[0], atol=1e-6)


def test_artifact_round_trip_predicts_the_same(tmp_path) -> None:
    emb, label = clusters(120, seed=10)
    correct = np.stack([(label == 0), (label == 1)], axis=1).astype(float)
    policy = StackedPolicy(k=8, c=1.0).fit(emb, correct)
    save_policy(
        policy,
        tmp_path / "p.npz",
        encoder="test",
        experts=["a", "b"],
        fitted_on={"source": "synthetic"},
    )
    loaded = load_policy(tmp_path / "p.npz")
    assert loaded.kind == "stacked"
    np.testing.assert_allclose(loaded.policy.predict_quality(emb), policy.predict_quality(emb))


def test_fit_and_predict_are_fast_enough_for_serving() -> None:
    rng = np.random.default_rng(11)
    emb = rng.normal(size=(1500, 384))
    correct = (rng.uniform(size=(1500, 12)) < 0.5).astype(float)
    start = time.perf_counter()
    policy = StackedPolicy().fit(emb, correct)
    assert time.perf_counter() - start < 30.0
    query = rng.normal(size=(1, 384))
    policy.predict_quality(query)
    start = time.perf_counter()
    for _ in range(20):
        policy.predict_quality(query)
    # Generous bounds for a loaded 2-core CI box; unloaded: ~2 s fit (3,000 rows), ~1 ms predict.
    assert (time.perf_counter() - start) / 20 < 0.05
