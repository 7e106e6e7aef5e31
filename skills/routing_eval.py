"""Routing-quality harness: fit every routing policy on one outcomes file, evaluate on another.

    python -m skills.routing_eval --train A.jsonl --test B.jsonl --models models.yaml \\
        [--pool NAME ...] --out DIR

writes `DIR/report.json` and `DIR/curve.png`. For each policy (router/policies.py) it sweeps the
cost knob λ on the test part and reports the accuracy/cost curve, `cost_fraction_at` (the least
average cost, as a fraction of the best single model's, reaching 80/90/95/100% of its accuracy),
APGR, the λ calibrated on the training part alone for target costs, per-category accuracy of
every single model and every policy (at λ = 0 and at each calibrated λ), and multi-expert (k > 1)
curves combined by competence-weighted vote over the `predictions` field.

Outcomes may be fractional scores in [0, 1] (skills/outcome_format.py): "accuracy" is then the
mean score of the experts chosen. Voting is scored by exact match of the voted answer with the
gold `answer`, so it is evaluated only for 0/1 outcomes with predictions and gold answers, and
skipped, with the reason in the report, otherwise. Models in the data but not in the pool are
ignored (listed in the report).

Missing outcomes: in fitting, an unknown outcome is masked (never counted as wrong). In evaluation,
test questions where any pool model's outcome is unknown are dropped, since the router may pick
any expert and an unknown outcome cannot be scored; the report counts them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from router.classify import Encoder
from router.policies import POLICIES, cross_fitted_quality, make_policy
from router.recruit import LAMBDA_GRID, calibrate_quality, recruit
from skills._routing_categories import category_table, per_category_report
from skills._routing_report import first_above, mix_curve, summarise, sweep, write_plot
from skills.outcomes import (
    ModelsFile,
    OutcomesError,
    OutcomeTable,
    Question,
    load_models,
    load_outcomes,
    models_in,
)

__all__ = ["HashingEncoder", "cli_encoder", "evaluate_routing", "main", "split_by_hash", "write_plot"]

log = logging.getLogger(__name__)

#: Target cost fractions (of the best single model's cost) the λ calibration is reported for.
CALIBRATION_TARGETS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.7)
MISSING_TREATMENT = (
    "fit: unknown outcomes are masked per expert; evaluation: test questions where any pool "
    "model's outcome is unknown are dropped (the router may pick any expert, and an unknown "
    "outcome can be scored neither right nor wrong)"
)


class HashingEncoder(Encoder):
    """Deterministic bag-of-words hashing encoder: no model, for smoke runs and tests."""

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim
        self.name = f"hashing-{dim}"

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        import hashlib

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "big")
                out[i, h % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


def split_by_hash(
    questions: Sequence[Question], train_fraction: float = 0.5
) -> tuple[list[Question], list[Question]]:
    """Deterministic split by a hash of each question id (stable across runs and machines)."""
    import hashlib

    train, test = [], []
    for q in questions:
        bucket = int.from_bytes(hashlib.sha256(q.id.encode()).digest()[:8], "big") / 2.0**64
        (train if bucket < train_fraction else test).append(q)
    return train, test


def _category_quality(train: OutcomeTable, test: OutcomeTable, strength: float = 5.0) -> np.ndarray:
    """Per-category training accuracy for each test query's true category (shrunk to global)."""
    known = ~np.isnan(train.correct)
    y = np.where(known, train.correct, 0.0)
    glob = y.sum(0) / np.maximum(known.sum(0), 1)
    table = {}
    for c in set(train.categories):
        m = train.categories == c
        table[c] = (y[m].sum(0) + strength * glob) / (known[m].sum(0) + strength)
    return np.stack([table.get(c, glob) for c in test.categories])


def evaluate_routing(
    train: Sequence[Question],
    test: Sequence[Question],
    models: ModelsFile,
    pool: Sequence[str] | None,
    encoder: Encoder,
    *,
    policies: Mapping[str, Mapping[str, object]] | None = None,
    ks: Sequence[int] = (3, 5),
    folds: int = 5,
    seed: int = 0,
    lambdas: Sequence[float] = tuple(LAMBDA_GRID),
    cache_dir: str | Path | None = None,
    use_cache: bool = False,
) -> dict:
    """Fit each policy on `train`, evaluate on `test`; returns the report (see module docstring).

    `policies` maps registry names to hyper-parameters (default: every policy with its defaults).
    Only `train` is used for fitting, choosing the best single model and calibrating λ.
    """
    # Default pool: reference_pool, else every costed model with outcomes in both parts.
    pool = models.resolve_pool(pool, models_in(train) & models_in(test))
    cost = models.costs(pool)  # [E]
    tr, te_all = OutcomeTable.build(train, pool), OutcomeTable.build(test, pool)
    te = te_all.subset(te_all.complete_rows())
    if len(te) == 0:
        unknown = np.isnan(te_all.correct).sum(axis=0)
        gaps = ", ".join(f"{m} ({n})" for m, n in zip(pool, unknown, strict=True) if n)
        raise OutcomesError(
            "no test question has outcomes for every pool model, so no routing choice can be "
            f"scored; unknown outcomes per model: {gaps}; drop the models with the most gaps "
            "from --pool"
        )
    if len(tr) < folds:
        raise OutcomesError(f"need at least {folds} training questions, got {len(tr)}")
    policies = {n: {} for n in POLICIES} if policies is None else dict(policies)
    for name in policies:
        if name not in POLICIES:
            raise OutcomesError(
                f"unknown policy '{name}'; known policies are: {', '.join(POLICIES)}"
            )

    if use_cache:
        from router.classify import encode_cached

        emb_tr = encode_cached(encoder, tr.prompts, cache_dir)
        emb_te = encode_cached(encoder, te.prompts, cache_dir)
    else:
        emb_tr, emb_te = encoder.encode(tr.prompts), encoder.encode(te.prompts)

    train_acc = np.nanmean(tr.correct, axis=0)  # [E]; the mean score for fractional outcomes
    test_acc = te.correct.mean(axis=0)  # [E]
    best = int(np.argmax(train_acc))
    ref = {
        "model": pool[best],
        "accuracy": round(float(test_acc[best]), 4),
        "cost": float(cost[best]),
        "train_accuracy": round(float(train_acc[best]), 4),
        "chosen_on": "train",
    }
    cheap = int(np.lexsort((-test_acc, cost))[0])
    weak = (float(test_acc[cheap]), float(cost[cheap]))
    # Oracle: per query the cheapest expert reaching the best score (right, for 0/1 outcomes).
    top = te.correct.max(axis=1, keepdims=True)  # [M, 1]
    oracle_cost = np.where(te.correct >= top, cost[None, :], np.inf).min(axis=1)
    singles = [
        {
            "model": m,
            "accuracy": round(float(a), 4),
            "cost": float(c),
            "train_accuracy": round(float(t), 4),
        }
        for m, a, c, t in zip(pool, test_acc, cost, train_acc, strict=True)
    ]
    report: dict = {
        "pool": pool,
        "costs": dict(zip(pool, cost.tolist(), strict=True)),
        "encoder": encoder.name,
        "n_train": len(tr),
        "n_test": len(te_all),
        "n_test_evaluated": len(te),
        "outcome_kind": "binary" if tr.binary and te.binary else "fractional",
        "categories": sorted(set(tr.categories.tolist()) | set(te_all.categories.tolist())),
        "ignored_models": sorted((models_in(train) | models_in(test)) - set(pool)),
        "missing_outcomes": {
            "train_unknown_entries_masked": int(np.isnan(tr.correct).sum()),
            "test_questions_dropped": len(te_all) - len(te),
            "treatment": MISSING_TREATMENT,
        },
        "best_single": ref,
        "oracle_accuracy": round(float(top.mean()), 4),
        "oracle_cost": round(float(oracle_cost.mean()), 4),
        "single_models": singles,
        "definitions": {
            "accuracy": "mean outcome score of the expert(s) answering: the fraction right for "
            "0/1 outcomes, the mean score for fractional ones",
            "ignored_models": "models with outcomes in the data that are not in the pool",
            "cost": "average over test questions of the summed active_b of the experts called",
            "cost_fraction_at": "least cost/best_single.cost among measured curve points whose "
            "accuracy >= f * best_single.accuracy; null if none",
            "apgr": f"RouteLLM APGR on a cost axis from the cheapest pool model ({pool[cheap]}) "
            f"to the best single model; see skills/_routing_report.apgr",
            "knob": "λ in utility = quality - λ·cost/max(cost) (router/recruit.py)",
            "calibrated": "λ chosen on cross-fitted training predictions only, for a target "
            "cost fraction; the test accuracy/cost it then gives",
        },
    }

    per_cat = _category_quality(tr, te)
    report["baselines"] = {
        "best_single": ref,
        "random_mix": summarise(
            mix_curve([(s["cost"], s["accuracy"]) for s in singles]), ref, weak
        ),
        "per_category_best": summarise(sweep(per_cat, te, cost, 1, lambdas), ref, weak),
    }

    skip_votes = _vote_skip_reason(te)
    report["policies"] = {}
    points: dict[str, dict[str, tuple[float, np.ndarray]]] = {}
    for name, params in policies.items():
        log.info("fitting %s %s", name, params)
        policy = make_policy(name, **params).fit(emb_tr, tr.correct, list(tr.categories))
        quality = policy.predict_quality(emb_te)  # [M, E]
        entry = {
            "params": dict(params),
            **summarise(sweep(quality, te, cost, 1, lambdas), ref, weak),
        }
        oof = cross_fitted_quality(
            name, emb_tr, tr.correct, tr.categories, folds, seed, dict(params)
        )
        points[name] = {"max_quality": (0.0, recruit(quality, cost, 0.0)[:, 0])}
        entry["calibrated"] = []
        for target in CALIBRATION_TARGETS:
            lam = calibrate_quality(oof, cost, target, reference_cost=ref["cost"])
            chosen = recruit(quality, cost, lam)[:, 0]
            points[name][f"target_{target}"] = (lam, chosen)
            entry["calibrated"].append(
                {
                    "target_cost_fraction": target,
                    "knob": round(lam, 6),
                    "test_cost_fraction": round(float(cost[chosen].mean() / ref["cost"]), 4),
                    "test_accuracy": round(float(te.correct[np.arange(len(te)), chosen].mean()), 4),
                }
            )
        entry["multi_expert"] = {}
        for k in ks if skip_votes is None else ():
            if k > len(pool):
                continue
            curve = sweep(quality, te, cost, k, lambdas[::4])  # voting is slower; coarser
            beat = first_above(curve, ref["accuracy"])
            entry["multi_expert"][str(k)] = {
                **summarise(curve, ref, weak),
                "best_accuracy": max(curve, key=lambda p: (p["accuracy"], -p["cost"])),
                "beats_best_single_at": beat,
            }
        report["policies"][name] = entry
    if skip_votes is not None:
        report["multi_expert_skipped"] = skip_votes
    report["per_category"] = per_category_report(te, cost, ref["cost"], points)
    return report


def _vote_skip_reason(te: OutcomeTable) -> str | None:
    """Why k > 1 voting cannot be scored on `te`, or None when it can."""
    if all(p is None for p in te.predictions.ravel()):
        return "the test file has no 'predictions'; voting needs each model's answer"
    if not te.binary:
        return (
            "outcomes are fractional scores; a vote is scored by exact match with the gold "
            "'answer', which only 0/1 outcomes support"
        )
    missing = sum(a is None for a in te.answers)
    if missing:
        return f"{missing} test question(s) have no gold 'answer'; a vote is scored against it"
    return None


def cli_encoder(name: str) -> Encoder:
    """The encoder a command-line tool was asked for: the registry's names
    (`router.encoders.make_encoder`: static, minilm, minilm:<max tokens>) or `hash` (no model;
    tests only)."""
    if name == "hash":
        return HashingEncoder()
    from router.encoders import make_encoder

    try:
        return make_encoder(name)
    except ValueError as exc:
        raise OutcomesError(f"{exc} (or hash)") from None


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="quorum eval-routing",
        description="Fit every routing policy on --train and report routing quality on --test.",
    )
    parser.add_argument("--train", required=True, type=Path, help="outcomes .jsonl[.gz] to fit on")
    parser.add_argument("--test", required=True, type=Path, help="outcomes .jsonl[.gz] to score")
    parser.add_argument("--models", required=True, type=Path, help="models.yaml (costs, pool)")
    parser.add_argument(
        "--pool",
        nargs="+",
        default=None,
        help="pool model names (space or comma separated); default reference_pool, else every "
        "model in --models with an active_b and outcomes in both files",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--encoder",
        default="minilm",
        help="minilm (default), minilm:<max tokens>, or hash (no model; smoke runs)",
    )
    parser.add_argument(
        "--policies",
        default=",".join(POLICIES),
        help=f"comma-separated subset of: {', '.join(POLICIES)}",
    )
    parser.add_argument("--k", default="3,5", help="multi-expert sizes to vote over (comma list)")
    parser.add_argument("--folds", type=int, default=5, help="folds for cross-fitted calibration")
    parser.add_argument("--no-cache", action="store_true", help="do not cache embeddings on disk")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns 0 on success, 2 on bad input (message on stderr, no traceback)."""
    try:
        args = _parse_args(argv)
    except SystemExit as exc:  # argparse already printed the usage error
        return int(exc.code or 0)
    try:
        pool = [n.strip() for item in args.pool or [] for n in item.split(",") if n.strip()] or None
        names = [n.strip() for n in args.policies.split(",") if n.strip()]
        ks = [int(k) for k in args.k.split(",") if k.strip()]
        if args.folds < 2:
            raise OutcomesError(f"--folds must be at least 2, got {args.folds}")
        models = load_models(args.models)
        if pool or models.reference_pool:
            models.resolve_pool(pool)  # fail on pool names before the slow loads
        train, test = load_outcomes(args.train), load_outcomes(args.test)
        report = evaluate_routing(
            train,
            test,
            models,
            pool,
            cli_encoder(args.encoder),
            policies={n: {} for n in names},
            ks=ks,
            folds=args.folds,
            use_cache=not args.no_cache,
        )
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        write_plot(report, args.out / "curve.png")
    except (OutcomesError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:  # the MiniLM encoder's optional dependencies
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write to {args.out}: {exc}", file=sys.stderr)
        return 2
    for point, what in (("max_quality", "λ = 0"), ("target_0.5", "λ calibrated for 50% cost")):
        print(f"{report['outcome_kind']} outcomes; accuracy per category at {what} (test part):")
        print(category_table(report, point))
    print(f"wrote {args.out / 'report.json'} and {args.out / 'curve.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
