"""Curves, their arithmetic and the plot for the routing-quality report (skills/routing_eval.py).

A curve is a list of operating points `{knob, accuracy, cost}` (cost = average active_b per
query); `sweep` measures one from a policy's quality matrix, recruiting and (k > 1) voting with
the live router's code. All summaries are relative to a reference: the best single model
(accuracy A*, cost C*).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from experts.answers import competence_weights, vote
from router.recruit import recruit
from skills.outcomes import OutcomeTable

#: The accuracy fractions (of the best single model's) that `cost_fraction_at` reports.
FRACTIONS: tuple[str, ...] = ("0.8", "0.9", "0.95", "1.0")


def cost_fraction_at(
    curve: Sequence[dict],
    ref_accuracy: float,
    ref_cost: float,
    fractions: Sequence[str] = FRACTIONS,
) -> dict[str, float | None]:
    """Per fraction f: the least `cost / ref_cost` over curve points with accuracy >= f · A*.

    Read off the measured points (no interpolation); None when no point reaches f · A*.
    A tiny tolerance (1e-9) keeps f = 1.0 reachable by the reference model itself.
    """
    out: dict[str, float | None] = {}
    for f in fractions:
        costs = [p["cost"] for p in curve if p["accuracy"] >= float(f) * ref_accuracy - 1e-9]
        out[f] = round(float(min(costs)) / ref_cost, 4) if costs else None
    return out


def first_above(curve: Sequence[dict], accuracy: float) -> dict | None:
    """The cheapest point whose accuracy strictly exceeds `accuracy`, or None."""
    above = [p for p in curve if p["accuracy"] > accuracy + 1e-9]
    return min(above, key=lambda p: (p["cost"], -p["accuracy"])) if above else None


def apgr(
    curve: Sequence[dict], weak: tuple[float, float], strong: tuple[float, float], n: int = 201
) -> float | None:
    """Average performance gap recovered (RouteLLM, Ong et al. 2024), generalised to a cost axis.

    `weak` and `strong` are (accuracy, cost) of the cheapest pool model and the best single model.
    For budgets x evenly spaced on [weak cost, strong cost], acc(x) is the best accuracy reachable
    at average cost <= x by randomly mixing two curve points (the curve's upper concave hull; the
    weak model's accuracy below the cheapest point), and PGR(x) = (acc(x) - weak acc) /
    (strong acc - weak acc). APGR is the mean PGR. With two models the cost axis is the share of
    calls to the strong model, which is RouteLLM's definition; random mixing of the two scores
    0.5. None when the weak model is not worse than the strong one.
    """
    (a_w, c_w), (a_s, c_s) = weak, strong
    if a_s <= a_w or c_s <= c_w or not curve:
        return None
    hull = upper_hull([(p["cost"], p["accuracy"]) for p in curve])
    hc, ha = np.array([h[0] for h in hull]), np.array([h[1] for h in hull])
    xs = np.linspace(c_w, c_s, n)
    acc = np.where(xs < hc[0] - 1e-9, a_w, np.interp(xs, hc, ha))
    return round(float(np.mean((acc - a_w) / (a_s - a_w))), 4)


def compact(curve: list[dict]) -> list[dict]:
    """Drop points that repeat the previous point's (accuracy, cost): the sweep is fine-grained."""
    out: list[dict] = []
    for p in curve:
        if out and out[-1]["accuracy"] == p["accuracy"] and out[-1]["cost"] == p["cost"]:
            continue
        out.append(p)
    return out


def upper_hull(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The upper concave hull of (cost, accuracy) points, cheapest first, dominated points dropped.

    Sending a random share of queries to operating point a and the rest to b gives, in
    expectation, the straight line between them: the hull is what random mixing can reach.
    """
    hull: list[tuple[float, float]] = []
    for c, a in sorted(set(points), key=lambda p: (p[0], -p[1])):
        if hull and a <= hull[-1][1]:
            continue  # costs at least as much, not more accurate
        while len(hull) >= 2:
            (c1, a1), (c2, a2) = hull[-2], hull[-1]
            if (a2 - a1) * (c - c1) <= (a - a1) * (c2 - c1):
                hull.pop()  # the middle point lies on or under the chord
            else:
                break
        hull.append((c, a))
    return hull


def mix_curve(points: Sequence[tuple[float, float]], steps: int = 50) -> list[dict]:
    """Random mixing of single models `(cost, accuracy)`: their upper hull, sampled `steps` per edge."""
    hull = upper_hull(points)
    curve = [{"knob": 0.0, "accuracy": round(hull[0][1], 4), "cost": round(hull[0][0], 4)}]
    for (c1, a1), (c2, a2) in itertools.pairwise(hull):
        for t in np.linspace(0, 1, steps + 1)[1:]:
            curve.append(
                {
                    "knob": round(float(t), 4),
                    "accuracy": round(a1 + t * (a2 - a1), 4),
                    "cost": round(c1 + t * (c2 - c1), 4),
                }
            )
    return curve


def point(knob: float, accuracy: float, cost: float) -> dict:
    """One operating point of a curve, rounded as the report stores it."""
    return {
        "knob": round(float(knob), 6),
        "accuracy": round(float(accuracy), 4),
        "cost": round(float(cost), 4),
    }


def summarise(curve: list[dict], ref: dict, weak: tuple[float, float]) -> dict:
    """A curve with its `cost_fraction_at` and APGR against the reference `ref` (best single)."""
    return {
        "curve": curve,
        "cost_fraction_at": cost_fraction_at(curve, ref["accuracy"], ref["cost"]),
        "apgr": apgr(curve, weak, (ref["accuracy"], ref["cost"])),
    }


def sweep(
    quality: np.ndarray,
    table: OutcomeTable,
    cost: np.ndarray,
    k: int,
    lambdas: Sequence[float],
) -> list[dict]:
    """Accuracy and average cost per λ; k > 1 votes over the experts' recorded answers."""
    curve, seen = [], {}
    weights = competence_weights(quality)  # [M, E]
    rows = np.arange(len(table))[:, None]
    for lam in lambdas:
        chosen = recruit(quality, cost, lam, k)  # [M, k]
        key = chosen.tobytes()
        if key not in seen:
            if k == 1:
                acc = float(table.correct[rows[:, 0], chosen[:, 0]].mean())
            else:
                answers, w = table.predictions[rows, chosen], weights[rows, chosen]
                voted = [vote(list(a), list(ww)) for a, ww in zip(answers, w, strict=True)]
                acc = float(
                    np.mean(
                        [
                            v is not None and v == g
                            for v, g in zip(voted, table.answers, strict=True)
                        ]
                    )
                )
            seen[key] = (acc, float(cost[chosen].sum(axis=1).mean()))
        curve.append(point(lam, *seen[key]))
    return compact(curve)


def write_plot(report: dict, path: str | Path) -> Path:
    """Accuracy vs. cost fraction of the best single model, every policy and baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = report["best_single"]
    fig, ax = plt.subplots(figsize=(9, 6))

    def frac(curve: Sequence[dict]) -> tuple[list[float], list[float]]:
        return [p["cost"] / ref["cost"] for p in curve], [p["accuracy"] for p in curve]

    for name, entry in report["policies"].items():
        (line,) = ax.plot(*frac(entry["curve"]), marker=".", ms=3, lw=1.5, label=f"{name} (k=1)")
        for k, multi in entry.get("multi_expert", {}).items():
            ax.plot(
                *frac(multi["curve"]),
                ls="--",
                lw=1,
                color=line.get_color(),
                label=f"{name} vote k={k}",
            )
    base = report["baselines"]
    ax.plot(*frac(base["random_mix"]["curve"]), color="grey", lw=1, label="random mix (hull)")
    ax.plot(
        *frac(base["per_category_best"]["curve"]),
        color="black",
        ls=":",
        lw=1.2,
        label="per-category best (true labels)",
    )
    for m in report["single_models"]:
        ax.scatter(m["cost"] / ref["cost"], m["accuracy"], s=14, color="grey", zorder=3)
        ax.annotate(
            m["model"][:18],
            (m["cost"] / ref["cost"], m["accuracy"]),
            fontsize=6,
            xytext=(2, 2),
            textcoords="offset points",
        )
    ax.axhline(ref["accuracy"], color="red", lw=0.8, label=f"best single ({ref['model']})")
    ax.axhline(0.95 * ref["accuracy"], color="red", lw=0.8, ls="--", label="95% of best single")
    ax.axvline(0.5, color="red", lw=0.6, ls=":")
    ax.axhline(report["oracle_accuracy"], color="green", lw=0.8, label="per-query oracle")
    ax.set_xlabel(f"average cost / cost of {ref['model']} (active params {ref['cost']:g}B)")
    score = "mean score" if report.get("outcome_kind") == "fractional" else "accuracy"
    ax.set_ylabel(f"{score} on the test part")
    ax.set_xlim(0, 1.6)
    ax.set_title(
        f"Routing quality, pool of {len(report['pool'])} (n_test={report['n_test_evaluated']})"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="lower right", ncol=2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
