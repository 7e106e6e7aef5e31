"""The router: classify → recruit, timed, as one decision that travels with the response.

`Router.route_batch` classifies several requests in one encoder batch (what makes batching pay);
`RouteBatcher` gives async callers that batching: requests that arrive while a batch is being
classified wait for the next one, which takes them all (up to `max_batch`). The pipeline
(`serving/pipeline.py`) calls it in the process that holds the request, so routing is not a hop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from experts.registry import Registry
from router.classify import SkillClassifier
from router.recruit import CompetenceSource, PolicySource, Recruiter, Recruitment


@dataclass(frozen=True)
class RoutingDecision:
    """What the router decided for one request; serialised into the response's `quorum` field."""

    model: str  # what the client asked for
    experts: list[str]  # chosen, best first
    skills: list[dict]  # [{"skill", "probability"}], most likely first (top 3)
    confidence: float | None  # None when the request named an expert directly
    recruitment: dict | None
    latency_ms: dict = field(default_factory=dict)  # {"classify", "recruit"}
    # The query's embedding (routed requests): kept for feedback, never serialised.
    embedding: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "embedding"}


class Router:
    def __init__(
        self,
        classifier: SkillClassifier,
        registry: Registry,
        profiles: CompetenceSource,
        policies: PolicySource | None = None,
    ) -> None:
        if list(classifier.skills) != list(registry.skills):
            raise ValueError(
                "the classifier's skills differ from the registry's: "
                f"{classifier.skills} vs {registry.skills}; retrain the head "
                "(python -m router.train) or fix the registry's `skills`"
            )
        self.classifier = classifier
        self.recruiter = Recruiter(registry, profiles, policies)
        self._expert_names = {e.name for e in registry.experts}

    def route(
        self, text: str, model: str, exclude: Mapping[str, str] | None = None
    ) -> RoutingDecision:
        return self.route_batch([text], [model], [exclude])[0]

    def route_batch(
        self,
        texts: Sequence[str],
        models: Sequence[str],
        excludes: Sequence[Mapping[str, str] | None] | None = None,
    ) -> list[RoutingDecision]:
        """Route several requests; classification runs once for the batch (what makes batching pay).
        `excludes[i]`: experts request i cannot use, with why (router/eligibility.py)."""
        excludes = excludes or [None] * len(texts)
        for model in set(models):
            self.recruiter.candidates(model)  # unknown model fails before any work
        routed = [i for i, m in enumerate(models) if m not in self._expert_names]
        t0 = time.perf_counter()
        scores = self.classifier.classify([texts[i] for i in routed]) if routed else None
        classify_ms = (time.perf_counter() - t0) * 1000 / max(len(routed), 1)
        decisions: list[RoutingDecision] = []
        row = {i: n for n, i in enumerate(routed)}
        for i, model in enumerate(models):
            if i not in row:
                decisions.append(RoutingDecision(model, [model], [], None, None))
                continue
            n = row[i]
            t1 = time.perf_counter()
            embedding = None if scores.embeddings is None else np.asarray(scores.embeddings[n])
            recruitment: Recruitment = self.recruiter.recruit(
                np.asarray(scores.probs[n]), model, embedding=embedding, exclude=excludes[i]
            )
            recruit_ms = (time.perf_counter() - t1) * 1000
            decisions.append(
                RoutingDecision(
                    model=model,
                    experts=recruitment.experts,
                    skills=[{"skill": s, "probability": round(p, 4)} for s, p in scores.top(n)],
                    confidence=round(float(scores.confidence[n]), 4),
                    recruitment=recruitment.to_dict(),
                    latency_ms={"classify": round(classify_ms, 3), "recruit": round(recruit_ms, 3)},
                    embedding=embedding,
                )
            )
        return decisions


class RouteBatcher:
    """`await route(text, model)` for many concurrent callers, classified together.

    One batch runs at a time, in a worker thread (the encoder is CPU-bound; the event loop stays
    free); whoever arrives meanwhile joins the next batch. An unknown model fails alone, at once,
    not its batch. `in_thread=False` routes on the event loop instead, for encoders cheaper than
    the hand-off (the static encoder: a fraction of a millisecond a query, while a worker thread
    waits for the GIL behind a busy event loop; at 32 concurrent short requests Quorum's app went
    from 62 to 132 req/s on the shared 2 cores when routing moved onto the loop);
    requests that arrive in the same loop iteration still share a batch."""

    def __init__(self, router: Router, max_batch: int = 32, in_thread: bool = True) -> None:
        self.router = router
        self.max_batch = max_batch
        self.in_thread = in_thread
        self._waiting: list[tuple[str, str, Mapping[str, str] | None, asyncio.Future]] = []
        self._running = False

    async def route(
        self, text: str, model: str, exclude: Mapping[str, str] | None = None
    ) -> RoutingDecision:
        self.router.recruiter.candidates(model)
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((text, model, exclude, future))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = (self._waiting[: self.max_batch],
                                        self._waiting[self.max_batch :])  # fmt: skip
                texts, models = [b[0] for b in batch], [b[1] for b in batch]
                excludes = [b[2] for b in batch]
                try:
                    if self.in_thread:
                        decisions = await asyncio.to_thread(
                            self.router.route_batch, texts, models, excludes
                        )
                    else:
                        decisions = self.router.route_batch(texts, models, excludes)
                except Exception as exc:
                    for *_, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (*_, future), decision in zip(batch, decisions, strict=True):
                    if not future.done():  # the caller may have given up (route timeout)
                        future.set_result(decision)
                if not self.in_thread:
                    await asyncio.sleep(0)  # the loop's other work between inline batches
        finally:
            self._running = False
