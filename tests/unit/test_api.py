"""The OpenAI HTTP surface, end to end in process: real FastAPI app, real router logic, experts
replaced by scripted in-memory clients passed through the constructor."""

import json

import pytest
from fastapi.testclient import TestClient

from experts.errors import ContextLengthExceededError, ExpertError
from experts.registry import parse_registry
from router import Router
from router.classify import CentroidHead, EmbeddingSkillClassifier
from serving.ingress import create_api
from serving.observe import RecordingObserver
from serving.pipeline import Pipeline
from skills.store import InMemoryStateStore
from tests.conftest import KeywordEncoder
from tests.fakes import FakeExpert

REGISTRY = parse_registry({
    "skills": ["law", "math"],
    "router": {"max_body_bytes": 4096, "max_messages": 8, "default_max_tokens": 7},
    "experts": [
        {"name": "mathematician", "model": "m1", "skills": {"math": 0.9, "law": 0.1}},
        {"name": "jurist", "model": "m2", "skills": {"math": 0.1, "law": 0.9}},
        {"name": "flaky", "model": "m3", "default_competence": 0.0},
        {"name": "slow", "model": "m4", "default_competence": 0.0, "timeout_s": 0.2},
    ],
})  # fmt: skip


def scripted(name: str) -> FakeExpert:
    """Answers '<name> says: <last user text>' in word-sized deltas ('a', ' b') with no counts, then
    an empty "stop" delta with 11 prompt tokens and the word count; records its requests."""
    return FakeExpert(name, "{name} says: {question}", template=True, words="leading",
                      prompt_tokens=11)  # fmt: skip


def failing(after: int = 0) -> FakeExpert:
    """'flaky': every call yields `after` 'tok ' deltas, then fails."""
    return FakeExpert("flaky", error=ExpertError("expert 'flaky' failed: engine died"),
                      fail_after=after)  # fmt: skip


def too_long() -> FakeExpert:
    """Refuses every prompt as too long, as a vLLM replica does past its context."""
    return FakeExpert("jurist", error=ContextLengthExceededError(
        "expert 'jurist': the prompt is 5031 tokens; limit 2047", param="messages"))  # fmt: skip


def stalled() -> FakeExpert:
    """'slow': sleeps 30 s, then would answer 'never' in one final delta."""
    return FakeExpert("slow", "never", final_delta=False, completion_tokens=0, delay=30)


def make_client(flaky_after: int = 0, observer=None, overrides=None, registry=REGISTRY,
                counter=None):  # fmt: skip
    encoder = KeywordEncoder()
    head = CentroidHead(
        ["law", "math"], encoder.encode(["court contract judge", "solve equation x"]), 0.05
    )
    router = Router(EmbeddingSkillClassifier(encoder, head), registry, InMemoryStateStore())

    async def route(text, model, exclude=None):
        return router.route(text, model, exclude)

    experts = {"mathematician": scripted("mathematician"), "jurist": scripted("jurist"),
               "flaky": failing(flaky_after), "slow": stalled()}  # fmt: skip
    experts |= overrides or {}
    service = Pipeline(registry, route, experts, observer, counter=counter)
    return TestClient(create_api(service)), experts


def chat(client, **body):
    body.setdefault("model", "auto")
    body.setdefault("messages", [{"role": "user", "content": "solve the equation for x"}])
    return client.post("/v1/chat/completions", json=body)


def test_routed_completion_carries_the_decision_in_body_and_headers():
    client, experts = make_client()
    r = chat(client)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "mathematician"
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "mathematician says: solve the equation for x",
    }
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    routing = body["quorum"]["routing"]
    assert routing["experts"] == ["mathematician"] and routing["skills"][0]["skill"] == "math"
    assert {s["expert"] for s in routing["recruitment"]["scores"]} == set(experts)
    assert r.headers["x-quorum-expert"] == "mathematician" and r.headers["x-quorum-skill"] == "math"
    assert r.headers["x-quorum-request-id"] == body["id"]
    # default max_tokens comes from the registry
    assert experts["mathematician"].requests[-1].max_tokens == 7


def test_law_question_goes_to_the_jurist_and_expert_names_bypass_routing():
    client, _ = make_client()
    law = chat(client, messages=[{"role": "system", "content": "be brief"},
                                 {"role": "user", "content": "the judge and the contract"}])  # fmt: skip
    assert law.json()["model"] == "jurist"
    direct = chat(
        client, model="mathematician", messages=[{"role": "user", "content": "the judge"}]
    )
    assert direct.json()["model"] == "mathematician"
    assert direct.json()["quorum"]["routing"]["confidence"] is None


def test_streaming_is_openai_sse():
    client, _ = make_client()
    with client.stream("POST", "/v1/chat/completions", json={
        "model": "auto", "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "solve the equation for x"}]}) as r:  # fmt: skip
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = "".join(r.iter_text())
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[0]["quorum"]["routing"]["experts"] == ["mathematician"]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "mathematician says: solve the equation for x"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 7
    assert len({c["id"] for c in chunks}) == 1


def test_models_lists_virtual_models_and_experts():
    client, _ = make_client()
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids == ["auto", "mathematician", "jurist", "flaky", "slow"]
    assert client.get("/health").json()["status"] == "ok"
    one = client.get("/v1/models/jurist").json()  # the clients' models.retrieve
    assert one["id"] == "jurist" and one["quorum"]["kind"] == "expert"
    missing = client.get("/v1/models/gpt-9")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert "available models: auto, flaky, jurist" in missing.json()["error"]["message"]


@pytest.mark.parametrize(
    ("payload", "status", "param", "fragment"),
    [
        (b"{not json", 400, None, "not valid JSON"),
        (b"[1, 2]", 400, None, "JSON object"),
        (json.dumps({"model": "auto"}).encode(), 400, "messages", "is required"),
        (json.dumps({"model": "auto", "messages": []}).encode(), 400, "messages", "at least one"),
        (json.dumps({"model": "auto", "messages": "hi"}).encode(), 400, "messages", "messages"),
        (json.dumps({"model": "auto", "messages": [{"role": "wizard", "content": "x"}]}).encode(), 400, "messages", "role"),
        (json.dumps({"model": "auto", "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": "u"}}]}]}).encode(), 400, "messages", "content part 1 is of type 'image_url'; the experts read text only"),
        (json.dumps({"model": "auto", "messages": [{"role": "user", "content": [{"type": "text"}]}]}).encode(), 400, "messages", "content part 0 (text) needs a string 'text'"),
        (json.dumps({"model": "auto", "messages": [{"role": "user", "content": 5}]}).encode(), 400, "messages", "a string or a list of text parts"),
        (json.dumps({"model": 5, "messages": [{"role": "user", "content": "x"}]}).encode(), 400, "model", "model"),
        (json.dumps({"model": "auto", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}).encode(), 400, "max_tokens", "max_tokens"),
        (json.dumps({"model": "auto", "n": 9, "messages": [{"role": "user", "content": "x"}]}).encode(), 400, "n", "at most 8 choices"),
        (json.dumps({"model": "auto", "messages": [{"role": "user", "content": "x"}] * 9}).encode(), 400, "messages", "at most 8"),
        (json.dumps({"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}).encode(), 404, "model", "gpt-9"),
        (json.dumps({"model": "auto", "messages": [{"role": "user", "content": "x" * 5000}]}).encode(), 413, None, "limit"),
    ],
)  # fmt: skip
def test_bad_requests_get_openai_errors(payload, status, param, fragment):
    client, _ = make_client()
    r = client.post(
        "/v1/chat/completions", content=payload, headers={"content-type": "application/json"}
    )
    assert r.status_code == status
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert fragment in error["message"]
    assert error["param"] == param
    assert chat(client).status_code == 200  # and the service keeps serving


def test_failing_expert_before_first_token_is_a_502_and_service_survives():
    client, _ = make_client()
    r = chat(client, model="flaky")
    assert r.status_code == 502 and r.json()["error"]["code"] == "expert_failed"
    r = chat(client, model="flaky", stream=True)
    assert r.status_code == 502
    assert chat(client).status_code == 200


def test_failing_expert_mid_stream_ends_with_one_error_event():
    client, _ = make_client(flaky_after=2)
    with client.stream("POST", "/v1/chat/completions", json={
        "model": "flaky", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as r:  # fmt: skip
        raw = "".join(r.iter_text())
    events = [e for e in raw.split("\n\n") if e]
    assert json.loads(events[-1][6:])["error"]["code"] == "expert_failed"
    assert "[DONE]" not in raw


def test_stalled_expert_times_out_with_504():
    client, _ = make_client()
    r = chat(client, model="slow")
    assert r.status_code == 504 and r.json()["error"]["code"] == "expert_timeout"
    assert "0.2s" in r.json()["error"]["message"]


def test_unknown_route_and_method_are_openai_shaped():
    client, _ = make_client()
    assert client.get("/v1/nothing").json()["error"]["type"] == "not_found"
    assert client.get("/v1/chat/completions").status_code == 405


def test_route_endpoint_decides_without_generating():
    client, experts = make_client()
    r = client.post(
        "/v1/route", json={"model": "auto", "messages": [{"role": "user", "content": "the judge"}]}
    )
    assert r.json()["experts"] == ["jurist"]
    assert experts["jurist"].requests == []


def test_observer_sees_route_first_token_end_and_rejections():
    observer = RecordingObserver()
    client, _ = make_client(observer=observer)
    rid = chat(client).json()["id"]
    chat(client, model="flaky")
    chat(client, model="nope")
    kinds = [e[0] for e in observer.events]
    assert kinds == ["routed", "first_token", "finished", "routed", "finished", "rejected"]
    assert observer.events[2] == ("finished", rid, "mathematician", "ok")
    assert observer.events[4][3] == "expert_failed"
    assert observer.events[5] == ("rejected", "model_not_found")


def test_prompt_too_long_is_a_400_for_the_client_not_an_expert_failure():
    client, _ = make_client(overrides={"jurist": too_long()})
    for stream in (False, True):
        r = chat(client, model="jurist", stream=stream)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "context_length_exceeded"
        assert r.json()["error"]["param"] == "messages"
