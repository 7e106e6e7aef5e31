"""Routing: classify a query's skills, then recruit the expert(s) to answer it.

Router(classifier, registry, profiles).route(text, model) -> RoutingDecision

| module        | what                                                                        |
|---------------|-----------------------------------------------------------------------------|
| `classify.py` | text → vector (MiniLM) → P(skill) and a confidence, by a trained head        |
| `recruit.py`  | P(skill) × competence − λ·cost → expert(s), k, aggregator; the shared arithmetic |
| `router.py`   | `Router` (classify → recruit, timed) and `RouteBatcher` for async callers    |
| `policies.py` | offline-fitted routing policies (kNN, predictor, centroid, symbolic)        |
| `policies_stacked.py` | the `stacked` policy (kNN + ridge, per-expert logistic stage); registers itself |
| `train.py`    | trains the classifier's head                                                |

Competence comes in through `recruit.CompetenceSource` (a state store satisfies it).
"""

import router.policies_stacked  # noqa: F401  (adds "stacked" to router.policies.POLICIES)
from router.classify import (
    HEADS,
    CentroidHead,
    EmbeddingSkillClassifier,
    LogRegHead,
    SkillClassifier,
    SkillScores,
    load_head,
)
from router.recruit import CompetenceSource, ExpertScore, Recruiter, Recruitment
from router.router import RouteBatcher, Router, RoutingDecision

__all__ = [
    "HEADS",
    "CentroidHead",
    "CompetenceSource",
    "EmbeddingSkillClassifier",
    "ExpertScore",
    "LogRegHead",
    "Recruiter",
    "Recruitment",
    "RouteBatcher",
    "Router",
    "RoutingDecision",
    "SkillClassifier",
    "SkillScores",
    "load_head",
]
