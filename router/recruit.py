"""Stage 3 of the pipeline: recruit. Skill probabilities + expert competence + cost → expert(s).

Competence per (expert, skill) comes from the current measured profile in the state store when
one exists (`quorum profile` writes it), else from the registry's priors. Each expert's expected
quality on a query is the skill-weighted competence (Symbolic-MoE's local competence), and the
choice maximises `quality - λ · cost / max(cost)`.

The arithmetic below (`expected_quality`, `utility`, `rank_experts`, the λ sweep and its
calibration to a cost target) is shared with the offline routing policies (`router/policies.py`,
`skills/routing_eval.py`), so the live router and the evaluated policies are the same code.
Competence reaches the recruiter through `CompetenceSource`, an interface defined here: the state
stores of `skills/` satisfy it and `serving/` wires one in, so the router imports neither.

When a fitted routing policy is being served (`router/live_policy.py`: the registry's
`router.policy`, or one published to the state store), it replaces the skill-weighted competence:
expected quality is the policy's prediction from the query's embedding, the very `predict_quality`
that `quorum eval-routing` measures, and a `target_cost` becomes λ through its calibration.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np

from experts.registry import Registry

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
    competence_source: str  # "policy:<kind>@<version>", "profile:<version>" or "registry"
    aggregator: str | None = None  # the synthesis expert, when k > 1
    aggregation: str | None = None  # how k > 1 answers combine: synthesis | vote | confidence
    excluded: dict[str, str] = field(default_factory=dict)  # expert -> why it cannot serve this
    target_cost: float | None = None  # the cost target λ was calibrated for, when one is set
    note: str | None = None  # why a setting could not be honoured (e.g. target without policy)

    def to_dict(self) -> dict:
        return asdict(self)


class CompetenceSource(Protocol):
    """Where measured competence comes from: the current profile (`quorum profile` publishes it),
    or None before any was published. `skills.store.StateStore` and its Redis and resilient
    implementations satisfy it."""

    def current_profile(self) -> dict | None: ...


class QualityModel(Protocol):
    """A fitted policy as the recruiter uses it (`router.live_policy.ServedPolicy`)."""

    source: str  # "policy:<kind>@<version>"

    def quality(self, embeddings: np.ndarray) -> np.ndarray:
        """`[N, E]` predicted quality, E in registry order."""
        ...

    def knob(self, candidates: list[int], cost: np.ndarray, target: float) -> float | None:
        """λ for a target cost fraction over `candidates`; None without calibration."""
        ...


class PolicySource(Protocol):
    """Where the recruiter gets the policy to route with; None: profile or registry competence."""

    def current_policy(self) -> QualityModel | None: ...


class Recruiter:
    def __init__(
        self,
        registry: Registry,
        profiles: CompetenceSource,
        policies: PolicySource | None = None,
    ) -> None:
        self.registry = registry
        self.profiles = profiles
        self.policies = policies
        self._names = [e.name for e in registry.experts]
        self._cost = np.array([e.cost.blended for e in registry.experts])  # [E]

    def competence(self) -> tuple[np.ndarray, str]:
        """`[E, S]` competence and where it came from. A profile overrides the registry's priors
        expert by expert and skill by skill; what the profile does not cover keeps its prior."""
        matrix = np.array(self.registry.competence_matrix(), dtype=np.float64)  # [E, S]
        profile = self.profiles.current_profile()
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
            raise self.registry.unknown_model(model)
        allowed = virtual.experts or self._names
        return [self._names.index(n) for n in allowed]

    def recruit(
        self,
        skill_probs: np.ndarray,
        model: str,
        k: int | None = None,
        embedding: np.ndarray | None = None,
        exclude: Mapping[str, str] | None = None,
    ) -> Recruitment:
        """Choose experts for one query with skill distribution `skill_probs` `[S]` (and its
        `embedding` `[D]`, which a served policy predicts from): `k` of them, or by default what
        the registry says (fixed `experts_per_query`, or adaptive k when `adaptive_confidence` p
        is set: add experts, best first, until their cumulative routing probability reaches p).
        With more than one, also the aggregation and aggregator. `exclude`: experts that cannot
        serve this request, with why (router/eligibility.py); they are not ranked, and the
        recruitment lists them."""
        excluded = dict(exclude or {})
        idx = [i for i in self.candidates(model) if self._names[i] not in excluded]
        if not idx:
            raise ValueError(f"every expert of model '{model}' is excluded: {excluded}")
        virtual = self.registry.virtual_model(model)
        served = self.policies.current_policy() if self.policies is not None else None
        if served is not None and embedding is not None:
            quality = served.quality(embedding)[:, idx]  # [1, C]
            source = served.source
        else:
            served = None
            competence, source = self.competence()
            quality = expected_quality(skill_probs[None, :], competence[idx])  # [1, C]
        cost = self._cost[idx]  # [C]
        lam, target, note = self.cost_knob(virtual, idx, served)
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
            return Recruitment(chosen, scores, lam, source, excluded=excluded, target_cost=target,
                               note=note)  # fmt: skip
        mode = (virtual.aggregation if virtual else None) or self.registry.router.aggregation
        aggregator = self.aggregator_for(skill_probs, [self._names[i] for i in idx])
        if aggregator in excluded:  # it could not write this answer either
            aggregator = None
        return Recruitment(chosen, scores, lam, source, aggregator, mode, excluded, target, note)

    def cost_knob(
        self, virtual, idx: list[int], served: QualityModel | None
    ) -> tuple[float, float | None, str | None]:
        """λ, the target cost it stands for (if any), and a note when a target could not be met.

        Precedence: the virtual model's `target_cost`, its `cost_weight`, then the router's
        `target_cost`, then its `cost_weight`. A target needs a served policy with calibration."""
        config = self.registry.router
        target = virtual.target_cost if virtual is not None else None
        if target is None and (virtual is None or virtual.cost_weight is None):
            target = config.target_cost
        lam = config.cost_weight
        if virtual is not None and virtual.cost_weight is not None:
            lam = virtual.cost_weight
        if target is None:
            return lam, None, None
        knob = served.knob(idx, self._cost[idx], target) if served is not None else None
        if knob is None:
            return lam, target, (
                f"target_cost {target:g} needs a fitted routing policy with calibration "
                f"(`quorum fit-policy`); routed with cost_weight {lam:g} instead"
            )
        return knob, target, None

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
        profile = self.profiles.current_profile() or {}
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


# -- the arithmetic of recruitment, shared with the offline policies -------------------------------
# Every policy ends in a matrix of predicted quality `[N, E]` (probability that expert e answers
# query n well). Recruitment turns it into a choice with one cost knob, λ:
#     utility[n, e] = quality[n, e] - λ · cost[e] / max(cost)
# so λ is "how many points of quality the pool's most expensive expert must buy back".


def expected_quality(skill_probs: np.ndarray, competence: np.ndarray) -> np.ndarray:
    """Symbolic-MoE style local competence: `quality[n, e] = Σ_s p[n, s] · competence[e, s]`.

    | arg         | shape  | meaning                                  |
    |-------------|--------|------------------------------------------|
    | skill_probs | [N, S] | rows sum to 1                            |
    | competence  | [E, S] | P(correct) of expert e on skill s        |
    | returns     | [N, E] |                                          |
    """
    return np.asarray(skill_probs, dtype=np.float64) @ np.asarray(competence, dtype=np.float64).T


def utility(quality: np.ndarray, cost: np.ndarray, lam: float) -> np.ndarray:
    """Quality minus λ times cost relative to the most expensive expert. `[N, E]`."""
    cost = np.asarray(cost, dtype=np.float64)  # [E]
    scale = float(cost.max()) if cost.size and cost.max() > 0 else 1.0
    return np.asarray(quality, dtype=np.float64) - lam * (cost / scale)[None, :]


def rank_experts(util: np.ndarray) -> np.ndarray:
    """Expert indices per query, best first; ties go to the lower index (deterministic). `[N, E]`."""
    return np.argsort(-util, axis=1, kind="stable")


#: The cost-knob sweep: λ = 0 (quality only) up to λ large enough that the cheapest expert always
#: wins (quality lives in [0, 1], so λ·Δcost/max(cost) beats any quality gap once λ ≫ 1/Δ).
#: Dense (2% steps): on MMLU-Pro most queries change expert for λ in [0.1, 0.5], and a coarser
#: grid (145 points) left the curve up to 0.013 below what calibrated λs reach in between.
LAMBDA_GRID: np.ndarray = np.concatenate([[0.0], np.geomspace(1e-3, 1e3, 700)])


def recruit(quality: np.ndarray, cost: np.ndarray, lam: float, k: int = 1) -> np.ndarray:
    """Indices `[M, k]` of the `k` experts with the highest utility, best first."""
    if not 1 <= k <= quality.shape[1]:
        raise ValueError(f"k must be between 1 and the pool size {quality.shape[1]}, got {k}")
    return rank_experts(utility(quality, cost, lam))[:, :k]


def mean_cost(quality: np.ndarray, cost: np.ndarray, lam: float, k: int = 1) -> float:
    """Average per-query cost (sum over recruited experts) at knob `lam`."""
    chosen = recruit(quality, cost, lam, k)
    return float(np.asarray(cost, dtype=np.float64)[chosen].sum(axis=1).mean())


def calibrate_quality(
    quality: np.ndarray,
    cost: np.ndarray,
    target_cost_fraction: float,
    reference_cost: float | None = None,
    k: int = 1,
    lam_max: float = 1e3,
) -> float:
    """The smallest λ whose average cost on `quality`'s queries is <= target · reference_cost.

    The smallest such λ buys the most quality within the budget. Average cost only falls as λ
    grows, so bisection finds it; an unreachable budget returns `lam_max` (cheapest experts).
    `reference_cost` defaults to the most expensive expert's cost.
    """
    cost = np.asarray(cost, dtype=np.float64)
    budget = target_cost_fraction * (
        float(cost.max()) if reference_cost is None else reference_cost
    )
    if mean_cost(quality, cost, 0.0, k) <= budget:
        return 0.0
    lo, hi = 0.0, lam_max
    if mean_cost(quality, cost, hi, k) > budget:
        return lam_max
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if mean_cost(quality, cost, mid, k) <= budget:
            hi = mid
        else:
            lo = mid
    return hi
