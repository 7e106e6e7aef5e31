"""A stacked routing policy: kNN and ridge first stages, a per-expert logistic second stage.

    quality[n, e] = σ(b_e + Σ_j u_ej · logit knn[n, j] + Σ_j v_ej · logit ridge[n, j])

The first stage gives, for every expert j, two estimates of P(j answers query n correctly): the
shrunk kNN accuracy of `KNNPolicy` and a ridge regression (a linear probability model) on the
normalised embedding. The second stage is, per expert e, an L2-regularised logistic regression
on the logits of *all* experts' first-stage estimates: it calibrates each expert's scale (what
the cost trade-off `quality - λ·cost` compares across experts) and lets expert e borrow the
other experts' signal (a query many experts miss is hard for e too).

The second stage is fitted on honest first-stage features: leave-one-out kNN (a training query
is not its own neighbour) and the closed-form leave-one-out ridge prediction, so no inner
re-fitting is needed and a fit over 3,000 queries takes seconds.

Outcomes may be fractional in [0, 1] (pass rates, judge scores) and NaN where unknown: the kNN
rates and the ridge fits mask unknown entries per expert, and the logistic stage fits soft
labels by cross-entropy directly. The fitted state is plain
arrays and numbers (router/artifact.py saves it as `.npz`, no pickle).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from router.policies import (
    POLICIES,
    RoutingPolicy,
    _check_fit_inputs,
    _global_accuracy,
    _normalise,
)

__all__ = ["StackedPolicy", "logistic_soft", "ridge_loo"]

_EPS = 1e-3  # probabilities are clipped to [_EPS, 1 - _EPS] before taking logits


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1.0 - _EPS)
    return np.log(p / (1.0 - p))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def ridge_loo(
    x: np.ndarray, y: np.ndarray, alpha: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge regression of `y [N, T]` on `x [N, D]`, one unpenalised intercept per target.

    Returns `(w [D, T], b [T], loo [N, T])`: the weights, the intercepts, and each row's
    leave-one-out prediction (the fit without that row), from the hat matrix in closed form.
    One eigendecomposition of the `[D, D]` Gram matrix serves every target.
    """
    mx, my = x.mean(axis=0), y.mean(axis=0)
    xc = x - mx
    s2, v = np.linalg.eigh(xc.T @ xc)  # xcᵀxc = v·diag(s2)·vᵀ
    s2 = np.maximum(s2, 0.0)
    xv = xc @ v  # [N, D]
    w = v @ ((xv.T @ (y - my)) / (s2 + alpha)[:, None])  # [D, T]
    hat = (xv**2) @ (1.0 / (s2 + alpha)) + 1.0 / len(x)  # diag of the hat matrix [N]
    fitted = xc @ w + my
    loo = y - (y - fitted) / np.maximum(1.0 - hat, 1e-6)[:, None]
    return w, my - mx @ w, loo


def logistic_soft(
    x: np.ndarray, y: np.ndarray, c: float, iterations: int = 100
) -> tuple[np.ndarray, float]:
    """L2 logistic regression on soft labels `y` in [0, 1]: `(coef [F], intercept)`.

    Minimises `Σ CE(y_i, σ(x_i·coef + b)) + ||coef||² / (2c)` (scikit-learn's objective for
    `LogisticRegression(C=c)`; the intercept is not penalised; for 0/1 labels the same fit) by
    damped Newton steps. With one label value only, the intercept alone is the answer (the
    logit of the clipped mean).
    """
    if np.ptp(y) < 1e-12:
        return np.zeros(x.shape[1]), float(_logit(np.array([y.mean()]))[0])
    x1 = np.hstack([x, np.ones((len(x), 1))])
    penalty = np.append(np.full(x.shape[1], 1.0 / c), 0.0)
    beta = np.zeros(x1.shape[1])
    beta[-1] = _logit(np.array([y.mean()]))[0]

    def objective(b: np.ndarray) -> float:
        z = x1 @ b
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(penalty * b * b))

    current = objective(beta)
    for _ in range(iterations):
        p = _sigmoid(x1 @ beta)
        grad = x1.T @ (p - y) + penalty * beta
        hess = (x1 * (p * (1.0 - p))[:, None]).T @ x1 + np.diag(penalty + 1e-10)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-4 and objective(beta - t * step) > current + 1e-12:
            t *= 0.5  # backtrack: never increase the objective
        beta = beta - t * step
        previous, current = current, objective(beta)
        if previous - current < 1e-10 * max(1.0, abs(current)):
            break
    return beta[:-1], float(beta[-1])


class StackedPolicy(RoutingPolicy):
    """kNN + ridge first stages, then one logistic regression per expert on all experts' logits.

    `k`, `temperature`, `strength`: the kNN stage (as `KNNPolicy`); `alpha`: the ridge penalty on
    the normalised embedding; `c`: the inverse L2 strength of the logistic stage (sklearn's C).
    """

    name = "stacked"

    def __init__(
        self,
        k: int = 512,
        temperature: float = 0.1,
        strength: float = 4.0,
        alpha: float = 30.0,
        c: float = 0.01,
    ) -> None:
        self.k = k
        self.temperature = temperature
        self.strength = strength
        self.alpha = alpha
        self.c = c

    # -- first stage -------------------------------------------------------------------------------

    def _knn(self, q: np.ndarray, exclude_self: bool = False) -> np.ndarray:
        """Shrunk kNN accuracy `[M, E]` of unit queries `q` against the training rows (masked
        outcomes, as `KNNPolicy`); `exclude_self`: `q` are the training rows, each left out."""
        n = len(self.x)
        k = min(self.k, n - 1 if exclude_self else n)
        if k < 1:
            return np.tile(self.prior, (len(q), 1))
        known = ~np.isnan(self.correct)
        y = np.where(known, self.correct, 0.0)
        out = np.empty((len(q), self.correct.shape[1]))
        for start in range(0, len(q), 512):  # bounds the [chunk, N] similarity matrix
            sims = q[start : start + 512] @ self.x.T  # [C, N]
            if exclude_self:
                rows = np.arange(len(sims))
                sims[rows, start + rows] = -np.inf
            idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # [C, k]
            top = np.take_along_axis(sims, idx, axis=1).astype(np.float64)
            w = np.exp((top - top.max(axis=1, keepdims=True)) / self.temperature)
            w *= k / w.sum(axis=1, keepdims=True)  # sums to k: `strength` compares to k rows
            hits = np.einsum("ck,cke->ce", w, y[idx])
            seen = np.einsum("ck,cke->ce", w, known[idx].astype(np.float64))
            out[start : start + 512] = (hits + self.strength * self.prior) / (seen + self.strength)
        return out

    def _first_stage(self, q: np.ndarray) -> np.ndarray:
        """`[M, 2E]`: logits of the kNN and the ridge estimates for unit queries `q`."""
        ridge = q @ self.ridge_w + self.ridge_b
        return np.hstack([_logit(self._knn(q)), _logit(ridge)])

    # -- fit / predict -----------------------------------------------------------------------------

    def fit(
        self,
        embeddings: np.ndarray,
        correct: np.ndarray,
        categories: Sequence[str] | None = None,
    ) -> StackedPolicy:
        embeddings, correct = _check_fit_inputs(embeddings, correct)
        x = _normalise(embeddings)
        n_experts = correct.shape[1]
        self.x = x.astype(np.float32)
        self.correct = correct
        self.prior = _global_accuracy(correct)
        known = ~np.isnan(correct)

        # Ridge per expert on its known rows (one solve per distinct pattern of known rows);
        # leave-one-out predictions feed the second stage.
        self.ridge_w = np.zeros((x.shape[1], n_experts))
        self.ridge_b = self.prior.copy()
        ridge_loo_pred = np.tile(self.prior, (len(x), 1))
        patterns: dict[bytes, list[int]] = {}
        for e in range(n_experts):
            patterns.setdefault(known[:, e].tobytes(), []).append(e)
        for cols in patterns.values():
            rows = known[:, cols[0]]
            if rows.sum() < 3:
                continue
            w, b, loo = ridge_loo(x[rows], correct[np.ix_(rows, cols)], self.alpha)
            self.ridge_w[:, cols], self.ridge_b[cols] = w, b
            ridge_loo_pred[np.ix_(rows, cols)] = loo
            # Rows without these experts' outcomes still need a feature: the fitted ridge's.
            ridge_loo_pred[np.ix_(~rows, cols)] = x[~rows] @ w + b
        features = np.hstack(
            [_logit(self._knn(self.x, exclude_self=True)), _logit(ridge_loo_pred)]
        )  # [N, 2E]

        # Second stage: one soft-label logistic regression per expert on its known rows.
        self.stack_coef = np.zeros((n_experts, features.shape[1]))
        self.stack_intercept = _logit(self.prior)
        for e in range(n_experts):
            rows = known[:, e]
            if rows.any():
                self.stack_coef[e], self.stack_intercept[e] = logistic_soft(
                    features[rows], correct[rows, e], self.c
                )
        return self

    def predict_quality(self, embeddings: np.ndarray) -> np.ndarray:
        features = self._first_stage(_normalise(embeddings).astype(np.float32))
        return _sigmoid(features @ self.stack_coef.T + self.stack_intercept[None, :])


POLICIES.setdefault(StackedPolicy.name, StackedPolicy)
