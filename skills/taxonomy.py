"""Fit the skill taxonomy and the classifier head from the categories of an outcomes file.

    quorum train-classifier --outcomes FILE --out head.json [--kind logreg|centroid]
                            [--registry IN.yaml --registry-out OUT.yaml] [--encoder static|minilm|hash]

The head's skills are the data's categories, sorted (rows without one are `default`,
skills/outcome_format.py). The service refuses a classifier whose skills differ from the
registry's `skills` (router/router.py), so both must change together: the command prints the
registry lines that use the head, and with `--registry` writes a copy of that registry with
`skills` set to the categories, `router.classifier` pointing at the head, and each expert's skill
priors replaced by its measured mean score per category when the expert's `name` or `model` is
a model in the outcomes (other experts keep only their `default_competence`).

The head is trained on four rows in five (split by a hash of the id, router/train.py); the fifth
measures the held-out accuracy stored in the head's `meta`. The registry lines name the encoder
the head was fitted with (`router.classifier.encoder`; the service refuses a head fitted on
another), so a head fitted with `--encoder hash` (no model; tests) is not for serving.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

from experts.errors import QuorumError
from experts.registry import load_registry, parse_registry
from router.classify import HEADS, Encoder, Head
from router.train import train_head
from skills.outcomes import OutcomesError, Question, load_outcomes, models_in

__all__ = ["fit_taxonomy", "main", "measured_competence", "registry_with_taxonomy"]


def fit_taxonomy(
    questions: Sequence[Question],
    encoder: Encoder,
    kind: str = "logreg",
    cache_dir: str | Path | None = None,
) -> tuple[Head, dict]:
    """A head of `kind` whose skills are the categories of `questions`, and its metrics."""
    if kind not in HEADS:
        raise OutcomesError(f"unknown head kind '{kind}'; choose one of: {', '.join(HEADS)}")
    rows = [{"id": q.id, "prompt": q.prompt, "category": q.category} for q in questions]
    return train_head(kind, rows, encoder, cache_dir=cache_dir)


def measured_competence(questions: Sequence[Question]) -> dict[str, dict[str, float]]:
    """`{model: {category: mean score}}` over the known outcomes (a category the model never saw
    is left out, so the registry's `default_competence` applies there)."""
    out: dict[str, dict[str, float]] = {}
    for model in sorted(models_in(questions)):
        by_cat: dict[str, list[float]] = {}
        for q in questions:
            if model in q.outcomes:
                by_cat.setdefault(q.category, []).append(q.outcomes[model])
        out[model] = {c: round(float(np.mean(v)), 4) for c, v in sorted(by_cat.items())}
    return out


def registry_with_taxonomy(
    registry: dict, skills: list[str], head: dict, competence: dict[str, dict[str, float]]
) -> dict:
    """A copy of the registry document using the fitted taxonomy; validated before returning."""
    doc = dict(registry)
    doc["skills"] = list(skills)
    router = dict(doc.get("router") or {})
    router["classifier"] = dict(head)
    doc["router"] = router
    experts = []
    for expert in doc.get("experts") or []:
        expert = dict(expert)
        measured = competence.get(expert.get("name")) or competence.get(expert.get("model"))
        expert["skills"] = dict(measured or {})
        experts.append(expert)
    doc["experts"] = experts
    parse_registry(doc, "registry with the fitted taxonomy")
    return doc


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="quorum train-classifier",
        description="Fit the skill taxonomy and classifier head from an outcomes file's categories.",
    )
    parser.add_argument("--outcomes", required=True, type=Path, help="outcomes .jsonl[.gz]")
    parser.add_argument("--out", required=True, type=Path, help="head JSON to write")
    parser.add_argument("--kind", default="logreg", help=f"head kind: {', '.join(HEADS)}")
    parser.add_argument("--registry", type=Path, help="registry YAML to adapt to the taxonomy")
    parser.add_argument("--registry-out", type=Path, help="where to write the adapted registry")
    parser.add_argument("--encoder", default="static", help="static (default; the registry's "
                        "default), minilm[:<max tokens>] or hash (no model; tests only)")  # fmt: skip
    parser.add_argument("--no-cache", action="store_true", help="do not cache embeddings on disk")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns 0 on success, 2 on bad input (message on stderr, no traceback)."""
    from skills.routing_eval import cli_encoder

    try:
        args = _parse_args(argv)
    except SystemExit as exc:  # argparse already printed the usage error
        return int(exc.code or 0)
    if (args.registry is None) != (args.registry_out is None):
        print("error: --registry and --registry-out go together", file=sys.stderr)
        return 2
    try:
        registry = None
        if args.registry is not None:
            load_registry(args.registry)  # fail on a bad registry before the slow fit
            registry = yaml.safe_load(args.registry.read_text(encoding="utf-8"))
        questions = load_outcomes(args.outcomes)
        with tempfile.TemporaryDirectory(prefix="quorum-emb-") as scratch:
            cache = scratch if args.no_cache else None
            head, metrics = fit_taxonomy(questions, cli_encoder(args.encoder), args.kind, cache)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(head.to_json(**metrics, data=str(args.outcomes)))
        config = {"kind": head.kind, "artifact": str(args.out.resolve())}
        if args.encoder != "hash":
            config["encoder"] = args.encoder
        competence = measured_competence(questions)
        if registry is not None:
            doc = registry_with_taxonomy(registry, head.skills, config, competence)
            args.registry_out.parent.mkdir(parents=True, exist_ok=True)
            args.registry_out.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    except (OutcomesError, QuorumError, ValueError, ImportError) as exc:
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    held = metrics["held_out_accuracy"]
    print(f"{len(head.skills)} skills from {args.outcomes}; {head.kind} head -> {args.out} "
          f"(held-out accuracy {held if held is not None else 'n/a'}, "
          f"n={metrics['held_out_rows']}, encoder {metrics['encoder']})")  # fmt: skip
    print("# registry: the classifier's skills must equal `skills`, in this order")
    snippet = {"skills": head.skills, "router": {"classifier": config}}
    print(yaml.safe_dump(snippet, sort_keys=False, allow_unicode=True), end="")
    print("# measured mean score per category (priors for an expert's `skills:`):")
    for model, scores in competence.items():
        print(f"#   {model}: {scores}")
    if registry is not None:
        print(f"wrote {args.registry_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
