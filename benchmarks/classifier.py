"""Skill classifier: held-out accuracy on MMLU-Pro's 14 categories, and time per query.

    .venv/bin/python -m benchmarks.classifier

Accuracy is measured on the rows `router.train.is_held_out` keeps out of training (1 in 5 of
the bundled dev data), for every committed head. Time is the whole classifier (MiniLM encode +
head) on real held-out prompts, at batch 1 and batch 32; medians over repeated runs.
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np

from benchmarks._results import machine_description, write_section
from router import EmbeddingSkillClassifier, load_head
from router.classify import HEADS, MiniLMEncoder, encode_cached
from router.train import is_held_out, read_rows

COMMAND = ".venv/bin/python -m benchmarks.classifier"


def main() -> int:
    rows = read_rows()
    held = [r for r in rows if is_held_out(r["id"])]
    encoder = MiniLMEncoder()
    x = encode_cached(encoder, [r["prompt"] for r in rows])
    mask = np.array([is_held_out(r["id"]) for r in rows])
    lines = ["| head | held-out accuracy | top-2 accuracy | held-out rows |", "|---|---|---|---|"]
    for kind in HEADS:
        head = load_head("builtin", kind)
        y = np.array([head.skills.index(r["category"]) for r in held])
        probs = head.predict_proba(x[mask])
        acc = float((probs.argmax(1) == y).mean())
        top2 = float((np.argsort(-probs, 1)[:, :2] == y[:, None]).any(1).mean())
        lines.append(f"| {kind} | {acc:.4f} | {top2:.4f} | {len(held)} |")
        print(lines[-1], flush=True)

    clf = EmbeddingSkillClassifier(encoder, load_head("builtin", "logreg"))
    prompts = [r["prompt"] for r in held]
    lines += [
        "",
        "| batch | median ms per call | median ms per query | calls |",
        "|---|---|---|---|",
    ]
    for batch, calls in ((1, 200), (32, 30)):
        clf.classify(prompts[:batch])  # warm-up
        times = []
        for i in range(calls):
            chunk = [prompts[(i * batch + j) % len(prompts)] for j in range(batch)]
            t0 = time.perf_counter()
            clf.classify(chunk)
            times.append((time.perf_counter() - t0) * 1000)
        med = statistics.median(times)
        lines.append(f"| {batch} | {med:.1f} | {med / batch:.2f} | {calls} |")
        print(lines[-1], flush=True)
    body = (
        "Accuracy: the committed heads (`router/data/skill_head.*.json`, trained by "
        "`python -m router.train` on the other 4/5) on the held-out fifth of the bundled MMLU-Pro "
        "dev data. Timing: encoder + logreg head on held-out prompts (MiniLM, 256-token limit), "
        "CPU, while nothing else of Quorum ran.\n\n" + "\n".join(lines)
    )
    write_section("classifier", "Skill classifier (issue 2)", COMMAND, machine_description(), body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
