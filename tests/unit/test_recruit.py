import numpy as np
import pytest

from experts.errors import ModelNotFoundError
from experts.registry import parse_registry
from router import Recruiter, Router
from router.classify import CentroidHead, EmbeddingSkillClassifier
from skills.store import InMemoryStateStore
from tests.conftest import KeywordEncoder

SKILLS = ["law", "math"]


def registry(cost_weight=0.1):
    return parse_registry({
        "skills": SKILLS,
        "router": {"cost_weight": cost_weight},
        "virtual_models": [{"name": "quality", "cost_weight": 0.0},
                           {"name": "lawyers", "experts": ["jurist"]}],
        "experts": [
            {"name": "mathematician", "model": "m1", "skills": {"math": 0.9, "law": 0.2},
             "cost": {"input_per_1m": 1, "output_per_1m": 1}},
            {"name": "jurist", "model": "m2", "skills": {"math": 0.3, "law": 0.8},
             "cost": {"input_per_1m": 1, "output_per_1m": 1}},
            {"name": "generalist", "model": "m3", "default_competence": 0.85,
             "cost": {"input_per_1m": 10, "output_per_1m": 10}},
        ],
    })  # fmt: skip


def test_picks_the_skill_expert_and_reports_every_score():
    r = Recruiter(registry(), InMemoryStateStore())
    math = r.recruit(np.array([0.0, 1.0]), "auto")
    law = r.recruit(np.array([1.0, 0.0]), "auto")
    assert math.experts == ["mathematician"] and law.experts == ["jurist"]
    assert math.scores[0].expert == "mathematician" and len(math.scores) == 3
    assert math.competence_source == "registry"


def test_cost_weight_trades_quality_for_cost():
    # generalist: 0.85 on law at 10x the cost; jurist 0.8 at 1x.
    assert Recruiter(registry(0.0), InMemoryStateStore()).recruit(
        np.array([1.0, 0.0]), "auto"
    ).experts == ["generalist"]
    assert Recruiter(registry(0.1), InMemoryStateStore()).recruit(
        np.array([1.0, 0.0]), "auto"
    ).experts == ["jurist"]
    # a virtual model can override λ
    assert Recruiter(registry(0.1), InMemoryStateStore()).recruit(
        np.array([1.0, 0.0]), "quality"
    ).experts == ["generalist"]


def test_virtual_model_restricts_experts_and_direct_names_bypass():
    r = Recruiter(registry(), InMemoryStateStore())
    assert r.recruit(np.array([0.0, 1.0]), "lawyers").experts == ["jurist"]
    assert r.recruit(np.array([0.0, 1.0]), "generalist").experts == ["generalist"]


def test_unknown_model_lists_available():
    with pytest.raises(ModelNotFoundError) as info:
        Recruiter(registry(), InMemoryStateStore()).recruit(np.array([0.5, 0.5]), "gpt-4")
    assert "gpt-4" in info.value.message and "mathematician" in info.value.message
    assert info.value.status == 404


def test_a_measured_profile_overrides_priors_and_changes_the_decision():
    store = InMemoryStateStore()
    r = Recruiter(registry(), store)
    assert r.recruit(np.array([0.0, 1.0]), "auto").experts == ["mathematician"]
    store.publish_profile(
        {"version": "v7", "experts": {"jurist": {"skills": {"math": {"competence": 0.99}}}}}
    )
    decision = r.recruit(np.array([0.0, 1.0]), "auto")
    assert decision.experts == ["jurist"] and decision.competence_source == "profile:v7"


def _router(reg):
    encoder = KeywordEncoder()
    x = encoder.encode(["the court and the contract", "solve the equation for x"])
    head = CentroidHead(SKILLS, x, temperature=0.05)
    encoder.calls = 0
    return Router(EmbeddingSkillClassifier(encoder, head), reg, InMemoryStateStore()), encoder


def test_router_classifies_a_batch_once_and_skips_direct_requests():
    router, encoder = _router(registry())
    decisions = router.route_batch(
        ["solve this equation for x", "a contract dispute in court", "anything"],
        ["auto", "auto", "jurist"],
    )
    assert encoder.calls == 1
    assert decisions[0].experts == ["mathematician"] and decisions[0].skills[0]["skill"] == "math"
    assert decisions[1].experts == ["jurist"] and decisions[1].skills[0]["skill"] == "law"
    assert decisions[2].experts == ["jurist"] and decisions[2].confidence is None
    assert set(decisions[0].latency_ms) == {"classify", "recruit"}


def test_router_rejects_classifier_with_other_skills():
    reg = parse_registry({"skills": ["a", "b"], "experts": [{"name": "x", "model": "m"}]})
    router_args = _router(registry())[0].classifier
    with pytest.raises(ValueError, match="retrain the head"):
        Router(router_args, reg, InMemoryStateStore())


@pytest.mark.parametrize("in_thread", [True, False])
async def test_route_batcher_classifies_concurrent_requests_together(in_thread):
    import asyncio

    from router import RouteBatcher

    router, encoder = _router(registry())
    batcher = RouteBatcher(router, in_thread=in_thread)
    texts = ["solve this equation for x", "a contract dispute in court"] * 4
    decisions = await asyncio.gather(*(batcher.route(t, "auto") for t in texts))
    assert [d.experts[0] for d in decisions] == ["mathematician", "jurist"] * 4
    assert encoder.calls == 1  # all eight arrived before the first batch ran: one encoder call
    with pytest.raises(ModelNotFoundError):  # fails alone, at once, not its batch
        await batcher.route("hi", "gpt-5")
    again = await batcher.route("solve for x", "auto")
    assert again.experts == ["mathematician"]
