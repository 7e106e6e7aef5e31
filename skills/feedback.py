"""User feedback as outcome data: what was served, what users said of it, what the next fit reads.

For every routed answer the service keeps a *served* record for `router.feedback.window_s`: the
expert that answered, the model asked for, the query's embedding (never its text) and the API key
that asked. `POST /v1/feedback` turns one into a *feedback* record (a score in [0, 1] for that
expert on that embedding), kept until deleted; `quorum fit-policy --feedback` adds every feedback
record to the training outcomes (one row: the answering expert's score, the others unknown).

Keys: `quorum:served:<id>` (with a TTL), `quorum:feedback:<id>` (the latest score for that answer)
and the counter group `quorum:feedback:index` (one field per answer id with feedback).
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass

import numpy as np

from skills.store import StateStore

__all__ = [
    "FeedbackRows",
    "encode_vector",
    "feedback_records",
    "feedback_rows",
    "record_feedback",
    "record_served",
    "served_record",
]

SERVED_PREFIX = "quorum:served:"
FEEDBACK_PREFIX = "quorum:feedback:"
FEEDBACK_INDEX = "quorum:feedback:index"


def encode_vector(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


def decode_vector(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32)


def served_payload(
    *, experts: list[str], model: str, embedding: np.ndarray, encoder: str, key: str | None,
    aggregated: bool,
) -> dict:  # fmt: skip
    return {"experts": experts, "model": model, "embedding": encode_vector(embedding),
            "encoder": encoder, "key": key, "aggregated": aggregated,
            "time": time.time()}  # fmt: skip


def record_served(store: StateStore, request_id: str, payload: dict, ttl_s: float) -> None:
    store.put_json(SERVED_PREFIX + request_id, payload, ttl_s=ttl_s)


def served_record(store: StateStore, request_id: str) -> dict | None:
    return store.get_json(SERVED_PREFIX + request_id)


def record_feedback(
    store: StateStore, request_id: str, served: dict, score: float, comment: str | None
) -> dict:
    """Store (or replace) the feedback on one answer; returns the record."""
    record = {"id": request_id, "experts": served["experts"], "model": served["model"],
              "aggregated": served.get("aggregated", False), "score": float(score),
              "comment": comment, "embedding": served["embedding"],
              "encoder": served["encoder"], "time": time.time()}  # fmt: skip
    store.put_json(FEEDBACK_PREFIX + request_id, record)
    store.incr(FEEDBACK_INDEX, request_id)
    return record


def feedback_records(store: StateStore) -> list[dict]:
    """Every feedback record, oldest first."""
    records = [store.get_json(FEEDBACK_PREFIX + rid) for rid in store.counters(FEEDBACK_INDEX)]
    return sorted((r for r in records if r), key=lambda r: r["time"])


@dataclass(frozen=True)
class FeedbackRows:
    """Feedback as training rows for `experts`: embeddings `[N, D]`, outcomes `[N, E]` (NaN
    where unknown), plus what was left out and why."""

    embeddings: np.ndarray
    outcomes: np.ndarray
    used: int
    skipped: dict[str, int]


def feedback_rows(records: list[dict], experts: list[str], encoder: str) -> FeedbackRows:
    """Rows from single-expert answers on `encoder`'s embeddings. Feedback on an aggregated
    answer judges several experts at once and cannot be credited to one; it is counted, not used."""
    skipped = {"aggregated": 0, "other_encoder": 0, "unknown_expert": 0}
    vectors, rows = [], []
    for r in records:
        if r.get("aggregated") or len(r["experts"]) != 1:
            skipped["aggregated"] += 1
        elif r["encoder"] != encoder:
            skipped["other_encoder"] += 1
        elif r["experts"][0] not in experts:
            skipped["unknown_expert"] += 1
        else:
            row = np.full(len(experts), np.nan)
            row[experts.index(r["experts"][0])] = r["score"]
            vectors.append(decode_vector(r["embedding"]))
            rows.append(row)
    dim = len(vectors[0]) if vectors else 0
    return FeedbackRows(
        np.array(vectors, dtype=np.float32).reshape(len(vectors), dim),
        np.array(rows, dtype=np.float64).reshape(len(rows), len(experts)),
        len(rows),
        skipped,
    )
