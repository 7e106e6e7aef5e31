"""Competence with uncertainty: Beta posteriors per expert and skill, and the profile document.

Symbolic-MoE's local competence (per skill) and global competence (over all items, with its share
of the pool), each a Beta posterior over P(correct) whose prior mean is the registry's prior and
whose weight is `prior_strength` pseudo-observations; aggregator ability measured on syntheses.
The profiling job (skills/profile.py) produces the graded rows this module turns into a profile.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime
from typing import Any

from experts.registry import Expert, Registry
from skills.validation import ValidationSet


def _betacf(a: float, b: float, x: float) -> float:
    # Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4).
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((qam + 2 * m) * (a + 2 * m)),
                    -(a + m) * (qab + m) * x / ((a + 2 * m) * (qap + 2 * m))):  # fmt: skip
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-12:
            break
    return h


def beta_cdf(x: float, a: float, b: float) -> float:
    """Regularised incomplete beta I_x(a, b): the CDF of Beta(a, b) at x."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(ln) * _betacf(a, b, x) / a
    return 1.0 - math.exp(ln) * _betacf(b, a, 1.0 - x) / b


def beta_interval(a: float, b: float, mass: float = 0.95) -> tuple[float, float]:
    """Central `mass` interval of Beta(a, b), by bisection on the CDF (no SciPy needed)."""

    def quantile(q: float) -> float:
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if beta_cdf(mid, a, b) < q else (lo, mid)
        return (lo + hi) / 2

    tail = (1.0 - mass) / 2
    return round(quantile(tail), 4), round(quantile(1.0 - tail), 4)


def posterior(prior_mean: float, strength: float, correct: float, n: int) -> dict[str, Any]:
    """Beta posterior of P(correct) from a prior mean with `strength` pseudo-observations."""
    # Keep both parameters positive even for a prior of exactly 0 or 1.
    m = min(max(prior_mean, 1e-3), 1 - 1e-3)
    a, b = strength * m + correct, strength * (1 - m) + (n - correct)
    return {"competence": round(a / (a + b), 4), "alpha": round(a, 4), "beta": round(b, 4),
            "n": n, "correct": correct, "ci95": list(beta_interval(a, b))}  # fmt: skip


Rows = dict[str, dict[str, list[dict[str, Any] | None]]]  # kind -> expert -> row per item


def compute_profile(
    registry: Registry, data: ValidationSet, rows: Rows, prior_strength: float
) -> dict:
    """The profile document from graded rows (`rows[kind][expert][i]` for `data.items[i]`);
    every posterior's prior weighs `prior_strength` pseudo-observations."""
    s = prior_strength
    experts: dict[str, Any] = {}
    for e in registry.experts:
        graded = [(it, r) for it, r in zip(data.items, rows["answer"][e.name], strict=True) if r]
        skills: dict[str, Any] = {}
        for skill in data.skills:
            scores = [r["score"] for it, r in graded if skill in it.skills]
            if scores:
                prior = e.skills.get(skill, e.default_competence)
                skills[skill] = posterior(prior, s, sum(scores), len(scores))
        global_prior = sum(e.skills.get(k, e.default_competence) for k in data.skills) / len(
            data.skills
        )
        experts[e.name] = {
            "global": posterior(global_prior, s, sum(r["score"] for _, r in graded), len(graded)),
            "skills": skills,
            "errors": sum(1 for _, r in graded if r.get("error")),
            "aggregator": _aggregator(e, data, rows, global_prior, s),
        }
    total = sum(x["global"]["competence"] for x in experts.values()) or 1.0
    for x in experts.values():
        x["global"]["share"] = round(x["global"]["competence"] / total, 4)
    aggs = {n: x["aggregator"]["competence"] for n, x in experts.items() if x["aggregator"]}
    reg_json = json.dumps(registry.model_dump(mode="json"), sort_keys=True)
    reg = {"experts": [e.name for e in registry.experts],
           "digest": hashlib.sha256(reg_json.encode()).hexdigest()[:16]}  # fmt: skip
    body = {"registry": reg, "data": data.digest,
            "data_source": data.source, "experts": experts,
            "aggregator": max(aggs, key=lambda n: aggs[n]) if aggs else None}  # fmt: skip
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:8]
    now = datetime.now(UTC)
    # ISO time to the millisecond sorts in publication order; the hash names the content.
    version = f"{now.strftime('%Y-%m-%dT%H:%M:%S')}.{now.microsecond // 1000:03d}Z-{digest}"
    return {"version": version, "created": now.isoformat(), **body}


def _aggregator(
    expert: Expert, data: ValidationSet, rows: Rows, prior: float, s: float
) -> dict | None:
    if not expert.can_aggregate:
        return None
    agg = [(i, r) for i, r in enumerate(rows["aggregate"][expert.name]) if r]
    if not agg:
        return None
    idx = [i for i, _ in agg]
    singles = {name: sum(rows["answer"][name][i]["score"] for i in idx if rows["answer"][name][i])
               for name in rows["answer"] if name != expert.name}  # fmt: skip
    best = max(singles.values()) / len(idx) if singles else 0.0
    result = posterior(prior, s, sum(r["score"] for _, r in agg), len(agg))
    accuracy = result["correct"] / len(agg)
    return {**result, "accuracy": round(accuracy, 4), "best_single_accuracy": round(best, 4),
            "gain": round(accuracy - best, 4), "items": [data.items[i].id for i in idx]}  # fmt: skip
