"""Routing audit: records built from the pipeline's hooks, the in-process ring buffer, and
`GET /admin/routing/{request_id}` (the Redis stream is tested against a real redis-server in
tests/integration/test_metrics.py)."""

import json

import pytest

from experts.errors import QuorumError
from serving.audit import AuditObserver, MemoryAuditLog
from serving.observe import FanOutObserver, RecordingObserver
from tests.unit.test_metrics import PROMPT_TOKENS, REGISTRY, chat, make_client


@pytest.fixture
def audit() -> MemoryAuditLog:
    return MemoryAuditLog(capacity=100)


def test_each_finished_request_leaves_one_record_with_decision_timings_and_outcome(audit):
    client = make_client(AuditObserver(audit, REGISTRY), audit)
    rid = chat(client, "solve x").json()["id"]
    record = client.get(f"/admin/routing/{rid}").json()
    assert record["request_id"] == rid and record["model"] == "auto"
    assert record["skills"][0] == {"skill": "math", "probability": 0.8}
    assert record["confidence"] == 0.4 and record["experts"] == ["mathematician"]
    assert record["scores"] == [{"expert": "mathematician", "quality": 0.7, "relative_cost": 0.5,
                                 "utility": 0.65}]  # fmt: skip
    assert record["competence_source"] == "registry" and record["cost_weight"] == 0.1
    latency = record["latency_ms"]
    assert latency["classify"] == 3.0 and latency["recruit"] == 0.5
    assert 0 <= latency["route"] <= latency["first_token"] <= latency["total"]
    assert record["outcome"] == {
        "status": "ok", "expert": "mathematician", "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": 3, "cost": pytest.approx((PROMPT_TOKENS * 2.0 + 3 * 8.0) / 1e6),
    }  # fmt: skip


def test_a_failed_and_a_streamed_request_are_recorded_with_their_status(audit):
    client = make_client(AuditObserver(audit, REGISTRY), audit)
    failed = chat(client, model="flaky")
    assert failed.status_code == 502
    streamed = chat(client, "the judge", stream=True)
    rid = streamed.headers["x-quorum-request-id"]
    assert client.get(f"/admin/routing/{rid}").json()["outcome"]["status"] == "ok"
    statuses = [r["outcome"]["status"] for r in audit.recent()]
    assert statuses == ["ok", "expert_failed"]


def test_records_hold_no_prompt_or_answer_text(audit):
    client = make_client(AuditObserver(audit, REGISTRY), audit)
    rid = chat(client, "my private question about x").json()["id"]
    raw = json.dumps(audit.get(rid))
    assert "private" not in raw and "two three" not in raw


def test_unknown_id_is_a_404_in_openai_shape_and_not_a_rejected_request(audit):
    recording = RecordingObserver()
    client = make_client(FanOutObserver([AuditObserver(audit, REGISTRY), recording]), audit)
    r = client.get("/admin/routing/chatcmpl-nope")
    assert r.status_code == 404
    error = r.json()["error"]
    assert error["code"] == "routing_record_not_found" and error["param"] == "request_id"
    assert "chatcmpl-nope" in error["message"] and "last 100 requests" in error["message"]
    assert recording.events == []


def test_without_an_audit_log_the_endpoint_says_so():
    client = make_client(RecordingObserver())
    r = client.get("/admin/routing/chatcmpl-x")
    assert r.status_code == 404 and "keeps no routing audit" in r.json()["error"]["message"]


def test_the_admin_auth_hook_guards_the_endpoint(audit):
    from fastapi.testclient import TestClient

    from serving.ingress import create_api
    from serving.pipeline import Pipeline
    from tests.unit.test_metrics import expert_clients, route

    class Unauthorized(QuorumError):
        status = 401
        type = "authentication_error"

    async def admin_only(request):
        if request.headers.get("authorization") != "Bearer admin":
            raise Unauthorized("admin endpoints need an admin key")

    service = Pipeline(REGISTRY, route, expert_clients(), AuditObserver(audit, REGISTRY))
    client = TestClient(create_api(service, audit, admin_auth=admin_only))
    rid = chat(client).json()["id"]
    assert client.get(f"/admin/routing/{rid}").status_code == 401
    ok = client.get(f"/admin/routing/{rid}", headers={"authorization": "Bearer admin"})
    assert ok.status_code == 200 and ok.json()["request_id"] == rid


def test_the_ring_buffer_keeps_the_last_n_and_returns_copies():
    ring = MemoryAuditLog(capacity=3)
    for i in range(5):
        ring.append({"request_id": f"r{i}", "outcome": {"status": "ok"}})
    assert ring.get("r0") is None and ring.get("r1") is None
    assert [r["request_id"] for r in ring.recent()] == ["r4", "r3", "r2"]
    ring.get("r4")["outcome"]["status"] = "changed"
    assert ring.get("r4")["outcome"]["status"] == "ok"


def test_an_unfinished_request_has_no_record_and_pending_state_is_bounded(audit):
    from router import RoutingDecision

    observer = AuditObserver(audit, REGISTRY, max_pending=2)
    decision = RoutingDecision("auto", ["jurist"], [], None, None)
    for rid in ("a", "b", "c"):
        observer.routed(rid, decision, 0.01)
    assert audit.get("c") is None
    observer.finished("a", "jurist", "ok", None, 0.1)  # evicted: dropped, not raised
    observer.finished("c", "jurist", "ok", None, 0.1)
    assert audit.get("a") is None and audit.get("c")["outcome"]["status"] == "ok"
