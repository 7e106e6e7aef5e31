"""Per-category accuracy for the routing report (skills/routing_eval.py).

Categories are whatever the outcome data calls them (MMLU-Pro subjects, dataset names, ...).
Accuracy is the mean outcome score of the expert each query was sent to: the fraction answered
right for 0/1 outcomes, the mean score for fractional ones.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from skills.outcomes import OutcomeTable

__all__ = ["category_means", "category_table", "per_category_report"]


def category_means(categories: np.ndarray, values: np.ndarray) -> dict[str, float]:
    """`{category: mean of values}` over the rows of each category, categories sorted."""
    return {
        c: round(float(values[categories == c].mean()), 4) for c in sorted(set(categories.tolist()))
    }


def per_category_report(
    table: OutcomeTable,
    cost: np.ndarray,
    ref_cost: float,
    points: Mapping[str, Mapping[str, tuple[float, np.ndarray]]],
) -> dict:
    """Per category: each single model's accuracy, the oracle's, and each policy's at its
    operating points.

    `points[policy][label] = (knob, chosen)` with `chosen [M]` the expert index each test query
    went to; the entry gives that point's per-category accuracy and average cost (as a fraction
    of the best single model's cost `ref_cost`).
    """
    cats = table.categories
    rows = np.arange(len(table))
    return {
        "definition": "accuracy: mean outcome score per category on the evaluated test questions "
        "(fraction right for 0/1 outcomes); cost_fraction: average cost of the experts called "
        "in that category / the best single model's cost",
        "n_test_evaluated": {c: int((cats == c).sum()) for c in sorted(set(cats.tolist()))},
        "single_models": {
            name: category_means(cats, table.correct[:, j]) for j, name in enumerate(table.pool)
        },
        "oracle": category_means(cats, table.correct.max(axis=1)),
        "policies": {
            policy: {
                label: {
                    "knob": round(float(knob), 6),
                    "accuracy": category_means(cats, table.correct[rows, chosen]),
                    "cost_fraction": category_means(cats, cost[chosen] / ref_cost),
                }
                for label, (knob, chosen) in by_label.items()
            }
            for policy, by_label in points.items()
        },
    }


def category_table(report: dict, point: str = "max_quality") -> str:
    """Plain-text table of the report's per-category accuracy: the best single model, the oracle
    and every policy at operating point `point` (default λ = 0), one row per category."""
    per_cat = report["per_category"]
    ref = report["best_single"]["model"]
    policies = list(per_cat["policies"])
    width = max([len("category"), *(len(c) for c in per_cat["n_test_evaluated"])])
    head = [f"{'category':<{width}}", f"{'n':>5}", f"{ref[:18]:>18}", f"{'oracle':>7}"]
    lines = ["  ".join(head + [f"{p[:10]:>10}" for p in policies])]
    for cat, n in per_cat["n_test_evaluated"].items():
        cells = [f"{cat:<{width}}", f"{n:>5}", f"{per_cat['single_models'][ref][cat]:>18.4f}",
                 f"{per_cat['oracle'][cat]:>7.4f}"]  # fmt: skip
        cells += [f"{per_cat['policies'][p][point]['accuracy'][cat]:>10.4f}" for p in policies]
        lines.append("  ".join(cells))
    return "\n".join(lines)
