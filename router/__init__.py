"""Routing: classify a query's skills, then recruit the expert(s) to answer it.

Router(classifier, registry, store).route(text, model) -> RoutingDecision
"""

from router._router import Router, RoutingDecision
from router.classify import (
    HEADS,
    CentroidHead,
    EmbeddingSkillClassifier,
    LogRegHead,
    SkillClassifier,
    SkillScores,
    load_head,
)
from router.recruit import ExpertScore, Recruiter, Recruitment

__all__ = [
    "HEADS",
    "CentroidHead",
    "EmbeddingSkillClassifier",
    "ExpertScore",
    "LogRegHead",
    "Recruiter",
    "Recruitment",
    "Router",
    "RoutingDecision",
    "SkillClassifier",
    "SkillScores",
    "load_head",
]
