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

#: Softmax temperature that turns utilities into routing probabilities for adaptive k.
ADAPTIVE_TEMPERATURE = 0.05


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
    aggregator: str | None = None  # the synthesis expert, when k > 1
    aggregation: str | None = None  # how k > 1 answers combine: synthesis | vote | confidence

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

    def recruit(self, skill_probs: np.ndarray, model: str, k: int | None = None) -> Recruitment:
        """Choose experts for one query with skill distribution `skill_probs` `[S]`: `k` of them,
        or by default what the registry says (fixed `experts_per_query`, or adaptive k when
        `adaptive_confidence` p is set: add experts, best first, until their cumulative routing
        probability reaches p). With more than one, also the aggregation and aggregator."""
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
        n = self._how_many(util[0, order], virtual) if k is None else k
        chosen = [s.expert for s in scores[: max(1, min(n, len(scores)))]]
        if len(chosen) == 1:
            return Recruitment(chosen, scores, lam, source)
        mode = (virtual.aggregation if virtual else None) or self.registry.router.aggregation
        aggregator = self.aggregator_for(skill_probs, [self._names[i] for i in idx])
        return Recruitment(chosen, scores, lam, source, aggregator, mode)

    def _how_many(self, ranked_utility: np.ndarray, virtual) -> int:
        """k from the registry: fixed, or adaptive. The routing probability of each candidate is
        a softmax of its utility at temperature ADAPTIVE_TEMPERATURE (utilities are
        probabilities-of-correct minus cost, so 0.05 separates experts 0.05 apart by e:1)."""
        config = self.registry.router
        p = (virtual.adaptive_confidence if virtual else None) or config.adaptive_confidence
        if p is None:
            return (virtual.experts_per_query if virtual else None) or config.experts_per_query
        z = (ranked_utility - ranked_utility.max()) / ADAPTIVE_TEMPERATURE  # [C], best first
        prob = np.exp(z) / np.exp(z).sum()
        return min(int(np.searchsorted(np.cumsum(prob), p - 1e-12) + 1), config.max_experts)

    def aggregator_for(self, skill_probs: np.ndarray, allowed: list[str]) -> str | None:
        """The synthesis expert for this query: among `can_aggregate` experts (those in `allowed`
        first), the best measured aggregation ability weighted by the query's skills
        (Symbolic-MoE). Ability per skill: the profile's `aggregator.skills[s]` when measured,
        else its overall measured aggregator competence, else the expert's own competence."""
        competence, _ = self.competence()  # [E, S]
        profile = self.store.current_profile() or {}
        pool = [e for e in self.registry.experts if e.can_aggregate]
        pool = [e for e in pool if e.name in allowed] or pool
        if not pool:
            return None
        best, best_score = None, -1.0
        for e in pool:
            measured = (profile.get("experts", {}).get(e.name) or {}).get("aggregator") or {}
            row = competence[self._names.index(e.name)].copy()  # [S]
            if "competence" in measured:
                row[:] = float(measured["competence"])
            for j, skill in enumerate(self.registry.skills):
                entry = (measured.get("skills") or {}).get(skill)
                if entry:
                    row[j] = float(entry["competence"])
            score = float(np.asarray(skill_probs, dtype=np.float64) @ row)
            if score > best_score:
                best, best_score = e.name, score
        return best
