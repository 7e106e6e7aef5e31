"""The fitted policy, live: saved and loaded without pickle, checked against the registry, served
by the router (from the registry or hot-reloaded from the state store), a target cost calibrated."""

import io
import json

import numpy as np
import pytest

from experts.registry import parse_registry
from router import Router
from router.artifact import (
    PolicyArtifactError,
    artifact_bytes,
    load_policy,
    policy_from_bytes,
    save_policy,
)
from router.classify import CentroidHead, EmbeddingSkillClassifier
from router.live_policy import ServedPolicy, StaticPolicySource
from router.policies import POLICIES, make_policy
from skills.policy_store import StorePolicySource, publish_policy
from skills.store import InMemoryStateStore
from tests.conftest import KeywordEncoder

ENCODER = KeywordEncoder()
EXPERTS = ["jurist", "mathematician"]  # registry order below is the reverse
REGISTRY = parse_registry({
    "skills": ["law", "math"],
    "router": {"cost_weight": 0.0},
    "experts": [
        # Priors say the mathematician is best at everything: only a policy can say otherwise.
        {"name": "mathematician", "model": "m1", "skills": {"math": 0.9, "law": 0.9},
         "cost": {"input_per_1m": 2.0, "output_per_1m": 2.0}},
        {"name": "jurist", "model": "m2", "skills": {"math": 0.1, "law": 0.1},
         "cost": {"input_per_1m": 1.0, "output_per_1m": 1.0}},
    ],
    "virtual_models": [{"name": "auto"}, {"name": "thrifty", "target_cost": 0.6}],
})  # fmt: skip

LAW = ["the court ruled on the contract", "a judge read the statute", "contract law and the court"]
MATH = ["solve the equation for x", "integrate the polynomial", "an equation with one unknown x"]


def training():
    """The jurist answers law right and math wrong; the mathematician the opposite."""
    texts = LAW * 10 + MATH * 10
    y = np.array([[1.0, 0.0]] * 30 + [[0.0, 1.0]] * 30)  # columns: EXPERTS
    return ENCODER.encode(texts), y, ["law"] * 30 + ["math"] * 30


def fitted(kind="knn"):
    x, y, cats = training()
    policy = make_policy(kind, **({"k": 8} if kind == "knn" else {})).fit(x, y, cats)
    return policy, artifact_bytes(policy, encoder=ENCODER.name, experts=EXPERTS,
                                  fitted_on={"rows": 60}, calibration_quality=y * 0.8 + 0.1)  # fmt: skip


def router(policies=None):
    head = CentroidHead(["law", "math"], ENCODER.encode(["court contract judge", "solve equation x"]),
                        0.05)  # fmt: skip
    return Router(EmbeddingSkillClassifier(ENCODER, head), REGISTRY, InMemoryStateStore(), policies)


@pytest.mark.parametrize("kind", sorted(POLICIES))
def test_every_policy_round_trips_through_the_npz_without_pickle(kind, tmp_path):
    policy, _ = fitted(kind)
    manifest = save_policy(policy, tmp_path / "p.npz", encoder=ENCODER.name, experts=EXPERTS,
                           fitted_on={"rows": 60})  # fmt: skip
    with np.load(tmp_path / "p.npz", allow_pickle=False) as npz:  # no object arrays inside
        assert "manifest.json" in npz.files
    loaded = load_policy(tmp_path / "p.npz")
    x = ENCODER.encode(LAW + MATH)
    np.testing.assert_allclose(loaded.policy.predict_quality(x), policy.predict_quality(x),
                               atol=1e-12)  # fmt: skip
    assert loaded.kind == kind and loaded.version == manifest["version"]
    side = json.loads((tmp_path / "p.manifest.json").read_text())
    assert side["encoder"] == ENCODER.name and side["experts"] == EXPERTS


def test_unreadable_artifacts_fail_with_what_is_wrong(tmp_path):
    with pytest.raises(PolicyArtifactError, match="not found"):
        load_policy(tmp_path / "missing.npz")
    with pytest.raises(PolicyArtifactError, match=r"not a policy artifact"):
        policy_from_bytes(b"garbage", "x.npz")
    buffer = io.BytesIO()
    np.savez(buffer, a=np.zeros(3))
    with pytest.raises(PolicyArtifactError, match="no manifest"):
        policy_from_bytes(buffer.getvalue(), "x.npz")
    with pytest.raises(PolicyArtifactError, match=r"an \.npz file"):
        save_policy(fitted()[0], tmp_path / "p.pkl", encoder="e", experts=EXPERTS, fitted_on={})


def test_an_artifact_that_does_not_fit_the_registry_is_refused_with_the_fix():
    _, (raw, _) = fitted()
    artifact = policy_from_bytes(raw)
    with pytest.raises(PolicyArtifactError, match=r"all-MiniLM.*refit"):
        ServedPolicy(artifact, REGISTRY, "all-MiniLM-L6-v2@256")
    _, (raw_one, _) = fitted()
    only_jurist = policy_from_bytes(raw_one)
    object.__setattr__(only_jurist, "manifest", {**only_jurist.manifest, "experts": ["jurist"]})
    with pytest.raises(PolicyArtifactError, match=r"no outcomes for expert.*mathematician"):
        ServedPolicy(only_jurist, REGISTRY, ENCODER.name)


def test_the_router_routes_with_the_policy_where_priors_say_otherwise():
    _, (raw, _) = fitted()
    served = ServedPolicy(policy_from_bytes(raw), REGISTRY, ENCODER.name)
    question = "the judge and the contract in court"
    before = router().route(question, "auto")
    after = router(StaticPolicySource(served)).route(question, "auto")
    assert before.recruitment["competence_source"] == "registry"
    assert before.experts == ["mathematician"]  # the priors
    assert after.recruitment["competence_source"] == served.source
    assert after.experts == ["jurist"]  # the fitted outcomes
    assert router(StaticPolicySource(served)).route("solve for x", "auto").experts == [
        "mathematician"
    ]
    assert after.embedding is not None and "embedding" not in after.to_dict()


def test_a_target_cost_becomes_the_calibrated_knob():
    _, (raw, _) = fitted()
    served = ServedPolicy(policy_from_bytes(raw), REGISTRY, ENCODER.name)
    decision = router(StaticPolicySource(served)).route("the court", "thrifty")
    recruitment = decision.recruitment
    assert recruitment["target_cost"] == 0.6 and recruitment["note"] is None
    # On the calibration rows, λ keeps the average cost within 0.6 of the dearest expert.
    cal = served.artifact.calibration_quality[:, served.columns]
    cost = np.array([2.0, 1.0])
    lam = recruitment["cost_weight"]
    chosen = np.argmax(cal - lam * cost / cost.max(), axis=1)
    assert cost[chosen].mean() <= 0.6 * 2.0 + 1e-9
    # Without a policy the target cannot be calibrated; the decision says so.
    plain = router().route("the court", "thrifty").recruitment
    assert plain["note"] and "needs a fitted routing policy" in plain["note"]


def test_a_published_policy_is_hot_reloaded_and_a_bad_one_ignored():
    store = InMemoryStateStore()
    clock = [0.0]
    source = StorePolicySource(store, REGISTRY, ENCODER.name, check_every_s=1.0,
                               clock=lambda: clock[0])  # fmt: skip
    live = router(source)
    assert live.route("the court", "auto").recruitment["competence_source"] == "registry"
    _, (raw, manifest) = fitted()
    publish_policy(store, raw, manifest)
    assert live.route("the court", "auto").recruitment["competence_source"] == "registry"
    clock[0] += 1.5  # the next check, a second later
    decision = live.route("the court", "auto")
    assert decision.recruitment["competence_source"] == f"policy:knn@{manifest['version']}"
    assert decision.experts == ["jurist"]
    # A policy for another encoder is refused; the router keeps the one it has.
    other = make_policy("knn").fit(*training()[:2])
    bad_raw, bad = artifact_bytes(other, encoder="another-encoder", experts=EXPERTS, fitted_on={})
    publish_policy(store, bad_raw, bad)
    clock[0] += 1.5
    assert (
        live.route("the court", "auto")
        .recruitment["competence_source"]
        .endswith(manifest["version"])
    )
