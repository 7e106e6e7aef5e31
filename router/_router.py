"""The router facade: classify → recruit, timed, as one decision that travels with the response."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from experts.registry import Registry
from router.classify import SkillClassifier
from router.recruit import Recruiter, Recruitment
from skills.store import StateStore


@dataclass(frozen=True)
class RoutingDecision:
    """What the router decided for one request; serialised into the response's `quorum` field."""

    model: str  # what the client asked for
    experts: list[str]  # chosen, best first
    skills: list[dict]  # [{"skill", "probability"}], most likely first (top 3)
    confidence: float | None  # None when the request named an expert directly
    recruitment: dict | None
    latency_ms: dict = field(default_factory=dict)  # {"classify", "recruit"}

    def to_dict(self) -> dict:
        return asdict(self)


class Router:
    def __init__(self, classifier: SkillClassifier, registry: Registry, store: StateStore) -> None:
        if list(classifier.skills) != list(registry.skills):
            raise ValueError(
                "the classifier's skills differ from the registry's: "
                f"{classifier.skills} vs {registry.skills}; retrain the head "
                "(python -m router.train) or fix the registry's `skills`"
            )
        self.classifier = classifier
        self.recruiter = Recruiter(registry, store)
        self._expert_names = {e.name for e in registry.experts}

    def route(self, text: str, model: str) -> RoutingDecision:
        return self.route_batch([text], [model])[0]

    def route_batch(self, texts: Sequence[str], models: Sequence[str]) -> list[RoutingDecision]:
        """Route several requests; classification runs once for the batch (what makes batching pay)."""
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
            recruitment: Recruitment = self.recruiter.recruit(np.asarray(scores.probs[n]), model)
            recruit_ms = (time.perf_counter() - t1) * 1000
            decisions.append(
                RoutingDecision(
                    model=model,
                    experts=recruitment.experts,
                    skills=[{"skill": s, "probability": round(p, 4)} for s, p in scores.top(n)],
                    confidence=round(float(scores.confidence[n]), 4),
                    recruitment=recruitment.to_dict(),
                    latency_ms={"classify": round(classify_ms, 3), "recruit": round(recruit_ms, 3)},
                )
            )
        return decisions
