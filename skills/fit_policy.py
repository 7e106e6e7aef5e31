"""Fit the routing policy the service serves, from the experts' own graded outcomes.

    quorum fit-policy --kind knn --profile-dir DIR --data SET.jsonl [--registry FILE] --out P.npz
    quorum fit-policy --kind knn --outcomes FILE.jsonl[.gz] [--registry FILE] --out P.npz
        [--feedback] [--publish] [--redis-url URL]

Training rows come from any of: a profiling job's graded answers (`quorum profile` writes
`DIR/results.jsonl`; `--data` is the validation set it ran, whose prompts are embedded), an
outcomes file (README, "Outcome data"), and with `--feedback` every `POST /v1/feedback` score in
the state store. Columns are the registry's experts, by name; an expert without a single known
outcome is an error (the policy could say nothing about it). The policy is `router.policies`'s
`--kind`, fitted on the live router's encoder; its cross-fitted predictions on the training rows
are kept as the calibration that turns a `target_cost` into λ. The artifact (`router/artifact.py`)
is written to `--out`; `--publish` makes it the current policy of every router on the same Redis
(they load it within a second), else point the registry at it: `router: {policy: {artifact: P}}`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from experts.errors import QuorumError
from experts.paths import quorum_home
from experts.registry import Registry, load_registry
from router.artifact import artifact_bytes, write_artifact
from router.classify import Encoder, encode_cached
from router.policies import POLICIES, cross_fitted_quality, make_policy
from skills.feedback import feedback_records, feedback_rows
from skills.outcomes import OutcomesError, load_outcomes
from skills.policy_store import publish_policy
from skills.routing_eval import cli_encoder
from skills.store import StateStore
from skills.validation import load_validation_set

__all__ = ["TrainingRows", "fit_and_save", "main", "rows_from_outcomes",
           "rows_from_profile"]  # fmt: skip

log = logging.getLogger(__name__)


class TrainingRows:
    """Prompts (or ready embeddings), outcomes `[N, E]` with NaN for unknown, categories."""

    def __init__(self, experts: Sequence[str]) -> None:
        self.experts = list(experts)
        self.prompts: list[str] = []
        self.categories: list[str] = []
        self.outcomes: list[np.ndarray] = []
        self.sources: dict[str, int] = {}

    def add(self, prompt: str, category: str, scores: dict[str, float | None], source: str) -> None:
        row = np.array([np.nan if scores.get(e) is None else float(scores[e])
                        for e in self.experts])  # fmt: skip
        if np.isnan(row).all():
            return  # says nothing about any registered expert
        self.prompts.append(prompt)
        self.categories.append(category)
        self.outcomes.append(row)
        self.sources[source] = self.sources.get(source, 0) + 1


def rows_from_profile(rows: TrainingRows, profile_dir: Path, data_path: Path) -> None:
    """Graded answers of a profiling job (`results.jsonl`, kind `answer`) on `data_path`'s items."""
    results = profile_dir / "results.jsonl"
    if not results.is_file():
        raise OutcomesError(f"{results} not found; run `quorum profile --out {profile_dir}` first")
    items = {it.id: it for it in load_validation_set(data_path).items}
    graded: dict[str, dict[str, float]] = {}
    for n, line in enumerate(results.read_text(encoding="utf-8").splitlines(), 1):
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s:%d: unreadable line, skipped", results, n)
            continue
        item = items.get(r.get("item"))
        if r.get("kind") != "answer" or item is None or r.get("item_hash") != item.digest():
            continue  # an aggregation, or an item of another (version of the) set
        if r.get("error") is None and r.get("score") is not None:
            graded.setdefault(item.id, {})[r["expert"]] = float(r["score"])
    if not graded:
        raise OutcomesError(f"{results} has no graded answers for the items of {data_path}")
    for item_id, scores in graded.items():
        item = items[item_id]
        user = [m["content"] for m in item.conversation() if m.get("role") == "user"]
        rows.add(user[-1] if user else item.conversation()[-1]["content"], item.skills[0], scores,
                 "profile")  # fmt: skip


def rows_from_outcomes(rows: TrainingRows, path: Path) -> None:
    for q in load_outcomes(path):
        rows.add(q.prompt, q.category, dict(q.outcomes), "outcomes")


def fit_and_save(
    kind: str, rows: TrainingRows, encoder: Encoder, out: Path, *,
    feedback: tuple[np.ndarray, np.ndarray, int] | None = None, folds: int = 5,
) -> tuple[bytes, dict]:  # fmt: skip
    """Embed, fit, calibrate and write the artifact; returns its bytes and manifest."""
    embeddings = encode_cached(encoder, rows.prompts) if rows.prompts else np.zeros((0, 0))
    outcomes = np.array(rows.outcomes).reshape(len(rows.outcomes), len(rows.experts))
    categories = list(rows.categories)
    if feedback is not None and feedback[2]:
        fb_emb, fb_out, _ = feedback
        embeddings = fb_emb if len(embeddings) == 0 else np.vstack([embeddings, fb_emb])
        outcomes = np.vstack([outcomes, fb_out])
        categories += ["feedback"] * len(fb_out)
    if len(outcomes) < folds:
        raise OutcomesError(f"{len(outcomes)} training rows; fitting needs at least {folds}")
    unknown = [e for j, e in enumerate(rows.experts) if np.isnan(outcomes[:, j]).all()]
    if unknown:
        raise OutcomesError(
            f"no known outcome for expert(s) {', '.join(unknown)}; profile them (`quorum "
            "profile`) or add their outcomes, or remove them from the registry"
        )
    policy = make_policy(kind).fit(embeddings, outcomes, categories)
    calibration = cross_fitted_quality(kind, embeddings, outcomes, categories, folds)
    fitted_on = {
        "rows": len(outcomes),
        "known_outcomes": int((~np.isnan(outcomes)).sum()),
        "sources": {**rows.sources, "feedback": int(feedback[2]) if feedback else 0},
    }
    raw, manifest = artifact_bytes(policy, encoder=encoder.name, experts=rows.experts,
                                   fitted_on=fitted_on, calibration_quality=calibration)  # fmt: skip
    write_artifact(out, raw, manifest)
    return raw, manifest


def _store(url: str | None) -> StateStore:
    url = url or os.environ.get("QUORUM_REDIS_URL")
    if not url:
        raise OutcomesError("--feedback and --publish need the state store: pass --redis-url "
                            "(or set QUORUM_REDIS_URL)")  # fmt: skip
    from skills.redis_store import RedisStateStore

    return RedisStateStore.from_url(url)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quorum fit-policy", description=__doc__.split("\n")[0])
    p.add_argument("--kind", default="knn", choices=sorted(POLICIES), help="policy (default knn)")
    p.add_argument("--registry", help="expert registry YAML (default: the embedded default)")
    p.add_argument("--profile-dir", type=Path, help="a `quorum profile` output folder")
    p.add_argument(
        "--data", type=Path, help="the validation set that profile ran (with --profile-dir)"
    )
    p.add_argument("--outcomes", type=Path, action="append", default=[],
                   help="an outcomes file (.jsonl[.gz]); repeatable")  # fmt: skip
    p.add_argument("--feedback", action="store_true", help="add POST /v1/feedback scores")
    p.add_argument("--publish", action="store_true", help="make it current on the state store")
    p.add_argument("--redis-url", help="the state store (default: $QUORUM_REDIS_URL)")
    p.add_argument("--encoder", help="static, minilm[:<max tokens>] or hash; default: the "
                   "registry's router.classifier.encoder (what the live router embeds with)")  # fmt: skip
    p.add_argument("--folds", type=int, default=5, help="folds of the cross-fitted calibration")
    p.add_argument("--out", type=Path, help="artifact path (default $QUORUM_HOME/policies/...)")
    return p


def run(args: argparse.Namespace) -> dict:
    registry: Registry = load_registry(args.registry)
    rows = TrainingRows([e.name for e in registry.experts])
    if args.profile_dir is not None:
        if args.data is None:
            raise OutcomesError("--profile-dir needs --data, the validation set the profile ran")
        rows_from_profile(rows, args.profile_dir, args.data)
    for path in args.outcomes:
        rows_from_outcomes(rows, path)
    encoder = cli_encoder(args.encoder or registry.router.classifier.encoder)
    store = _store(args.redis_url) if (args.feedback or args.publish) else None
    feedback = None
    if args.feedback:
        fb = feedback_rows(feedback_records(store), rows.experts, encoder.name)
        feedback = (fb.embeddings, fb.outcomes, fb.used)
        log.info("feedback: %d rows used, skipped %s", fb.used, fb.skipped)
    if not rows.prompts and not (feedback and feedback[2]):
        raise OutcomesError("no training rows: give --profile-dir/--data, --outcomes or --feedback")
    out = args.out or quorum_home() / "policies" / f"{args.kind}.npz"
    raw, manifest = fit_and_save(args.kind, rows, encoder, out, feedback=feedback,
                                 folds=args.folds)  # fmt: skip
    if args.publish:
        publish_policy(store, raw, manifest)
    return {"artifact": str(out), "published": bool(args.publish), **manifest}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = run(args)
    except (QuorumError, OutcomesError, ValueError) as exc:
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    if not summary["published"]:
        print(f"serve it: add `router: {{policy: {{artifact: {summary['artifact']}}}}}` to the "
              "registry, or rerun with --publish --redis-url URL", file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
