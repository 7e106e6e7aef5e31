"""The router's encoders side by side: held-out accuracy and time per query on the hot path.

    python -m benchmarks.classifier_hot

For the static encoder (router/static_encoder.py, the default), MiniLM with 64 tokens and MiniLM
with 256 (the previous default): logreg head accuracy on the held-out fifth of the bundled
MMLU-Pro dev data (committed heads where they exist, else a head trained here on the other 4/5
exactly as `router.train` does), and the median time of one `classify([text])` call (encoder +
head) for the overhead benchmark's two prompts, with one torch thread (as in the ingress).
Writes section `classifier-hot` of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np

from benchmarks._results import machine_description, write_section
from benchmarks.overhead import SHORT, long_prompt
from router import EmbeddingSkillClassifier, load_head
from router.classify import encode_cached
from router.dev_data import is_held_out, read_rows
from router.encoders import make_encoder
from router.train import train_head

COMMAND = "python -m benchmarks.classifier_hot"
SPECS = ("static", "minilm:64", "minilm")


def timed(clf: EmbeddingSkillClassifier, text: str, calls: int) -> float:
    clf.classify([text])
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        clf.classify([text])
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> int:
    import torch

    torch.set_num_threads(1)
    rows = read_rows()
    held = np.array([is_held_out(r["id"]) for r in rows])
    prompts = [r["prompt"] for r in rows]
    long = long_prompt()
    lines = [
        "| encoder | name | held-out accuracy | top-2 | head | short ms | long ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for spec in SPECS:
        encoder = make_encoder(spec)
        try:
            head, source = load_head("builtin", "logreg", spec), "committed"
        except ValueError:
            head, _ = train_head("logreg", rows, encoder)
            source = "trained here"
        x = encode_cached(encoder, prompts)[held]
        y = np.array(
            [head.skills.index(r["category"]) for r, h in zip(rows, held, strict=True) if h]
        )
        probs = head.predict_proba(x)
        acc = float((probs.argmax(1) == y).mean())
        top2 = float((np.argsort(-probs, 1)[:, :2] == y[:, None]).any(1).mean())
        clf = EmbeddingSkillClassifier(encoder, head)
        calls = 200 if spec == "static" else 30
        short_ms, long_ms = timed(clf, SHORT, calls), timed(clf, long, calls)
        lines.append(f"| `{spec}` | {encoder.name} | {acc:.4f} | {top2:.4f} | {source} | "
                     f"{short_ms:.2f} | {long_ms:.2f} |")  # fmt: skip
        print(lines[-1], flush=True)
    body = (
        f"Held-out fifth: {int(held.sum())} rows. Times: one `classify([text])` call (encoder + "
        f"logreg head), median, one torch thread; short prompt {len(SHORT.split())} words, long "
        f"prompt {len(long.split())} words. The machine was shared with other agents' jobs, so "
        "times are upper bounds.\n\n" + "\n".join(lines)
    )
    write_section("classifier-hot", "Router encoders: accuracy and time per query (issue 15)",
                  COMMAND, machine_description(), body)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
