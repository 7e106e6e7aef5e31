"""POST /v1/feedback end to end in process, and the loop it closes: feedback -> training rows ->
`quorum fit-policy` -> an artifact the router serves."""

import json
import time

import numpy as np
from fastapi.testclient import TestClient

from experts.registry import parse_registry
from router import Router
from router.artifact import load_policy
from router.classify import CentroidHead, EmbeddingSkillClassifier
from serving.auth import ApiKey, Authenticator, hash_key
from serving.feedback import FeedbackObserver, install_feedback
from serving.ingress import create_api
from serving.pipeline import Pipeline
from skills.feedback import feedback_records, feedback_rows
from skills.fit_policy import TrainingRows, fit_and_save
from skills.store import InMemoryStateStore
from tests.conftest import KeywordEncoder
from tests.fakes import FakeExpert

REGISTRY = parse_registry({
    "skills": ["law", "math"],
    "experts": [
        {"name": "mathematician", "model": "m1", "skills": {"math": 0.9, "law": 0.1}},
        {"name": "jurist", "model": "m2", "skills": {"math": 0.1, "law": 0.9}},
    ],
})  # fmt: skip


def make_client(keys=()):
    encoder = KeywordEncoder()
    head = CentroidHead(["law", "math"], encoder.encode(["court contract judge", "solve equation x"]),
                        0.05)  # fmt: skip
    router = Router(EmbeddingSkillClassifier(encoder, head), REGISTRY, InMemoryStateStore())

    async def route(text, model):
        return router.route(text, model)

    store = InMemoryStateStore()
    observer = FeedbackObserver(store, REGISTRY, encoder.name)
    experts = {n: FakeExpert(n, f"{n} answers") for n in ("mathematician", "jurist")}
    service = Pipeline(REGISTRY, route, experts, observer)
    auth = Authenticator([ApiKey(name=n, digest=hash_key(t)) for n, t in keys]) if keys else None
    api = create_api(service, auth=auth)
    install_feedback(api, observer, 4096)
    return TestClient(api), store, encoder


def ask(client, text="solve the equation for x", model="auto", **headers):
    r = client.post("/v1/chat/completions", headers=headers,
                    json={"model": model, "messages": [{"role": "user", "content": text}]})  # fmt: skip
    assert r.status_code == 200, r.text
    return r.json()


def test_feedback_is_recorded_for_the_expert_that_answered():
    client, store, _ = make_client()
    completion = ask(client)
    r = client.post("/v1/feedback", json={"id": completion["id"], "score": 0.25, "comment": "meh"})
    assert r.status_code == 200, r.text
    assert r.json() == {"object": "feedback", "id": completion["id"], "experts": ["mathematician"],
                        "score": 0.25, "recorded": True}  # fmt: skip
    [record] = feedback_records(store)
    assert record["comment"] == "meh" and record["experts"] == ["mathematician"]
    # Sending it again replaces it (one record per answer).
    client.post("/v1/feedback", json={"id": completion["id"], "score": 1.0})
    assert [r["score"] for r in feedback_records(store)] == [1.0]


def test_bad_feedback_gets_clear_errors_and_the_service_keeps_serving():
    client, _, _ = make_client()
    completion = ask(client)
    cases = [
        ({"id": completion["id"], "score": 1.5}, 400, "score"),
        ({"id": completion["id"]}, 400, "score"),
        ({"id": completion["id"], "score": 0.5, "extra": 1}, 400, "extra"),
        ({"id": "chatcmpl-unknown", "score": 0.5}, 404, "id"),
    ]
    for body, status, param in cases:
        r = client.post("/v1/feedback", json=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"]["param"] == param
    r = client.post("/v1/feedback", content=b"{not json")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    named = ask(client, model="jurist")  # named: not classified, so no embedding to learn from
    r = client.post("/v1/feedback", json={"id": named["id"], "score": 1})
    assert r.status_code == 404 and "name an expert" in r.json()["error"]["message"]
    assert ask(client)["choices"][0]["message"]["content"]


def test_feedback_needs_the_key_that_made_the_request():
    client, _, _ = make_client(keys=[("alice", "sk-alice"), ("bob", "sk-bob")])
    completion = ask(client, authorization="Bearer sk-alice")
    body = {"id": completion["id"], "score": 1.0}
    assert client.post("/v1/feedback", json=body).status_code == 401
    r = client.post("/v1/feedback", json=body, headers={"authorization": "Bearer sk-bob"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "feedback_key_mismatch"
    r = client.post("/v1/feedback", json=body, headers={"authorization": "Bearer sk-alice"})
    assert r.status_code == 200


def test_feedback_is_served_from_the_store_after_the_process_forgot_it():
    client, store, _ = make_client()
    completion = ask(client)
    deadline = time.time() + 5
    while store.get_json(f"quorum:served:{completion['id']}") is None and time.time() < deadline:
        time.sleep(0.01)  # the served record is written in the background
    record = store.get_json(f"quorum:served:{completion['id']}")
    assert record["experts"] == ["mathematician"] and "text" not in json.dumps(record)


def test_the_next_fit_learns_from_feedback(tmp_path):
    """Users score the jurist's law answers well; with a few outcomes of the mathematician, the
    policy fitted on both routes law to the jurist and math to the mathematician."""
    client, store, encoder = make_client()
    for text in ["the court and the contract", "a judge and a statute", "contract law"] * 4:
        completion = ask(client, text=text)  # routed: priors send law to the jurist
        score = 1.0 if completion["model"] == "jurist" else 0.0
        client.post("/v1/feedback", json={"id": completion["id"], "score": score})
    rows = feedback_rows(feedback_records(store), ["mathematician", "jurist"], encoder.name)
    assert rows.used == 12 and rows.outcomes.shape == (12, 2)
    # Every law question went to the jurist (priors), so only its column is known; add math rows.
    training = TrainingRows(["mathematician", "jurist"])
    for text in ["solve the equation for x", "integrate x squared"] * 3:
        training.add(text, "math", {"mathematician": 1.0, "jurist": 0.0}, "outcomes")
    training.add("the court", "law", {"mathematician": 0.0}, "outcomes")
    _, manifest = fit_and_save("knn", training, encoder, tmp_path / "p.npz",
                               feedback=(rows.embeddings, rows.outcomes, rows.used), folds=2)  # fmt: skip
    assert manifest["fitted_on"]["sources"] == {"outcomes": 7, "feedback": 12}
    policy = load_policy(tmp_path / "p.npz").policy
    q = policy.predict_quality(encoder.encode(["a judge in court", "solve for x"]))
    assert q[0, 1] > q[0, 0] and q[1, 0] > q[1, 1]
    assert np.isfinite(q).all()
