"""Train the skill classifier's head on the bundled MMLU-Pro dev data and write it as JSON.

    python -m router.train                      # both kinds, MiniLM → router/data/skill_head.<kind>.json
    python -m router.train --encoder static     # → router/data/skill_head.<kind>.static.json
    python -m router.train --kind centroid --out my_head.json --data my.jsonl

Rows are split by a hash of their `id`: one in five is held out and never trained on; the
held-out accuracy is printed and stored in the artifact's `meta`. To fit the skills themselves
from any outcome data's categories (and adapt a registry to them): `quorum train-classifier`
(skills/taxonomy.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from router.classify import HEADS, Encoder, Head, encode_cached
from router.dev_data import BUNDLED_DATA, is_held_out, read_rows
from router.encoders import make_encoder

__all__ = ["BUNDLED_DATA", "is_held_out", "main", "read_rows", "train_head"]

log = logging.getLogger(__name__)


def train_head(
    kind: str,
    rows: list[dict],
    encoder: Encoder,
    skills: list[str] | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[Head, dict]:
    """Fit a head of `kind` on the non-held-out rows; return it and its held-out metrics.

    A skill whose rows all fall in the held-out fold is trained on them instead (a skill without
    training rows would have no centroid); the held-out metrics are None when nothing is held out.
    """
    skills = skills or sorted({r["category"] for r in rows})
    index = {s: i for i, s in enumerate(skills)}
    x = encode_cached(encoder, [r["prompt"] for r in rows], cache_dir)  # [N, D]
    y = np.array([index[r["category"]] for r in rows])  # [N]
    held = np.array([is_held_out(r["id"]) for r in rows])
    for s in np.unique(y):
        if not (~held & (y == s)).any():
            held[y == s] = False
    head = HEADS[kind].fit(skills, x[~held], y[~held])
    metrics = {
        "encoder": encoder.name,
        "train_rows": int((~held).sum()),
        "held_out_rows": int(held.sum()),
        "held_out_accuracy": None,
        "held_out_top2_accuracy": None,
    }
    if held.any():
        probs = head.predict_proba(x[held])  # [H, S]
        metrics["held_out_accuracy"] = round(float((probs.argmax(1) == y[held]).mean()), 4)
        metrics["held_out_top2_accuracy"] = round(
            float((np.argsort(-probs, 1)[:, :2] == y[held][:, None]).any(1).mean()), 4
        )
    return head, metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m router.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--kind", choices=[*HEADS, "all"], default="all")
    parser.add_argument(
        "--data", help="JSONL with id, prompt, category (default: bundled MMLU-Pro dev)"
    )
    parser.add_argument(
        "--out", help="output file (one kind) or folder (all); default router/data/"
    )
    parser.add_argument("--encoder", default="minilm",
                        help="minilm, minilm:<max tokens> or static (the registry's default)")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        rows = read_rows(args.data)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    encoder = make_encoder(args.encoder)
    suffix = "" if args.encoder == "minilm" else "." + args.encoder.replace(":", "")
    kinds = list(HEADS) if args.kind == "all" else [args.kind]
    default_dir = Path(__file__).with_name("data")
    for kind in kinds:
        head, metrics = train_head(kind, rows, encoder)
        if args.out and len(kinds) == 1:
            out = Path(args.out)
        else:
            out = (Path(args.out) if args.out else default_dir) / f"skill_head.{kind}{suffix}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(head.to_json(**metrics))
        print(
            f"{kind}: held-out accuracy {metrics['held_out_accuracy']} "
            f"(top-2 {metrics['held_out_top2_accuracy']}, n={metrics['held_out_rows']}) → {out}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
