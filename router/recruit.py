"""Stage 3 of the pipeline: recruit. Skill probabilities + expert competence + cost → expert(s).

Competence per (expert, skill) comes from the current measured profile in the state store when
one exists (`quorum profile` writes it), else from the registry's priors. Each expert's expected
quality on a query is the skill-weighted competence (Symbolic-MoE's local competence), and the
choice maximises `quality - λ · cost / max(cost)` (router/_scoring.py, shared with the offline
routing harness so the live router and the evaluated policies are the same code).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from experts.errors import ModelNotFoundError
from experts.registry import Registry
from router._scoring import expected_quality, rank_experts, utility
from skills.store import StateStore


@dataclass(frozen=True)
class ExpertScore:
    expert: str
    quality: float
    relative_cost: float
    utility: float


@dataclass(frozen=True)
class Recruitment:
    experts: list[str]  # chosen, best first
    scores: list[ExpertScore]  # every candidate, best first
    cost_weight: float
    competence_source: str  # "profile:<version>" or "registry"
    aggregator: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class Recruiter:
    def __init__(self, registry: Registry, store: StateStore) -> None:
        self.registry = registry
        self.store = store
        self._names = [e.name for e in registry.experts]
        self._cost = np.array([e.cost.blended for e in registry.experts])  # [E]

    def competence(self) -> tuple[np.ndarray, str]:
        """`[E, S]` competence and where it came from. A profile overrides the registry's priors
        expert by expert and skill by skill; what the profile does not cover keeps its prior."""
        matrix = np.array(self.registry.competence_matrix(), dtype=np.float64)  # [E, S]
        profile = self.store.current_profile()
        if not profile:
            return matrix, "registry"
        skills = {s: j for j, s in enumerate(self.registry.skills)}
        for i, name in enumerate(self._names):
            for skill, entry in profile.get("experts", {}).get(name, {}).get("skills", {}).items():
                if skill in skills:
                    matrix[i, skills[skill]] = float(entry["competence"])
        return matrix, f"profile:{profile.get('version', '?')}"

    def candidates(self, model: str) -> list[int]:
        """Expert indices `model` may use; raises ModelNotFoundError for an unknown name."""
        if model in self._names:
            return [self._names.index(model)]
        virtual = self.registry.virtual_model(model)
        if virtual is None:
            known = ", ".join(
                sorted([*self._names, *(v.name for v in self.registry.virtual_models)])
            )
            raise ModelNotFoundError(
                f"model '{model}' does not exist; available models: {known}", param="model"
            )
        allowed = virtual.experts or self._names
        return [self._names.index(n) for n in allowed]

    def recruit(self, skill_probs: np.ndarray, model: str, k: int = 1) -> Recruitment:
        """Choose `k` experts for one query with skill distribution `skill_probs` `[S]`."""
        idx = self.candidates(model)
        virtual = self.registry.virtual_model(model)
        lam = self.registry.router.cost_weight
        if virtual is not None and virtual.cost_weight is not None:
            lam = virtual.cost_weight
        competence, source = self.competence()
        quality = expected_quality(skill_probs[None, :], competence[idx])  # [1, C]
        cost = self._cost[idx]  # [C]
        util = utility(quality, cost, lam)  # [1, C]
        order = rank_experts(util)[0]
        scale = float(cost.max()) if cost.max() > 0 else 1.0
        scores = [
            ExpertScore(
                expert=self._names[idx[j]],
                quality=round(float(quality[0, j]), 4),
                relative_cost=round(float(cost[j] / scale), 4),
                utility=round(float(util[0, j]), 4),
            )
            for j in order
        ]
        chosen = [s.expert for s in scores[:k]]
        return Recruitment(experts=chosen, scores=scores, cost_weight=lam, competence_source=source)
