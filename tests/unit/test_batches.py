"""The batch API end to end in process: real FastAPI app and Pipeline, scripted experts."""

from __future__ import annotations

import asyncio
import itertools
import json

import httpx
import pytest

from experts.errors import ModelNotFoundError
from experts.registry import parse_registry
from experts.stream import ExpertRequest
from router import RoutingDecision
from serving.batch_store import NotFoundError
from serving.batches import BatchRunner, BatchStore, install_batches
from serving.ingress import create_api
from serving.pipeline import Pipeline
from tests.fakes import FakeExpert

REGISTRY = parse_registry({"skills": ["law", "math"], "experts": [
    {"name": "jurist", "model": "m"}, {"name": "mathematician", "model": "m"}]})  # fmt: skip


async def route(text: str, model: str) -> RoutingDecision:
    if model != "auto":
        if model not in ("jurist", "mathematician"):
            raise ModelNotFoundError(f"model '{model}' does not exist", param="model")
        return RoutingDecision(model, [model], [], None, None)
    expert = "jurist" if "court" in text else "mathematician"
    return RoutingDecision(model, [expert], [], 0.9, {"scores": []})


def expert_clients(calls: list[ExpertRequest], gate=None, free=0) -> dict[str, FakeExpert]:
    """Each answers '<name>: <question>' in one delta, logging its requests in the shared `calls`;
    with `gate`, the requests after the first `free` (over both experts) wait for it."""
    return {n: FakeExpert(n, "{name}: {question}", template=True, final_delta=False,
                          prompt_tokens=5, completion_tokens=3, requests=calls, gate=gate,
                          free=free)
            for n in ("jurist", "mathematician")}  # fmt: skip


def questions(calls: list[ExpertRequest]) -> list[str]:
    return [request.messages[-1]["content"] for request in calls]


def service(calls: list[ExpertRequest], gate=None, free=0) -> Pipeline:
    return Pipeline(REGISTRY, route, expert_clients(calls, gate, free))


def jsonl(questions: list[str], model: str = "auto") -> bytes:
    rows = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": model, "messages": [{"role": "user", "content": q}]}}
            for i, q in enumerate(questions)]  # fmt: skip
    return "\n".join(json.dumps(r) for r in rows).encode()


QUESTIONS = ["court 1", "math 2", "court 3", "math 4", "court 5", "math 6"]


def client_for(svc: Pipeline, root) -> tuple[httpx.AsyncClient, BatchRunner]:
    app = create_api(svc)
    runner = install_batches(app, svc, root, concurrency=2)
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://q"), runner


async def upload(client: httpx.AsyncClient, content: bytes) -> str:
    r = await client.post("/v1/files", files={"file": ("in.jsonl", content)},
                          data={"purpose": "batch"})  # fmt: skip
    assert r.status_code == 200, r.text
    return r.json()["id"]


async def test_batch_runs_grouped_by_expert_and_writes_output_in_input_order(tmp_path):
    calls: list[ExpertRequest] = []
    client, runner = client_for(service(calls), tmp_path)
    async with client:
        file_id = await upload(client, jsonl([*QUESTIONS, "x"])[:-1] + b'"}]}}')  # a typo'd line
        bad = (await client.post("/v1/batches", json={"input_file_id": file_id,
               "endpoint": "/v1/chat/completions", "completion_window": "24h"})).json()  # fmt: skip
        assert bad["status"] == "failed" and bad["errors"]["data"][0]["line"] == 7
        rows = jsonl(QUESTIONS) + b"\n" + jsonl(["court 7"], model="nobody")
        rows = rows.replace(b'"q0", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "nobody"',
                            b'"q6", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "nobody"')  # fmt: skip
        file_id = await upload(client, rows)
        created = (await client.post("/v1/batches", json={"input_file_id": file_id,
                   "endpoint": "/v1/chat/completions", "completion_window": "24h"})).json()  # fmt: skip
        batch = await runner.wait(created["id"])
        assert batch["status"] == "completed"
        assert batch["request_counts"] == {"total": 7, "completed": 6, "failed": 1}
        out = (await client.get(f"/v1/files/{batch['output_file_id']}/content")).text.splitlines()
        records = [json.loads(line) for line in out]
        assert [r["custom_id"] for r in records] == [f"q{i}" for i in range(6)]
        answer = records[1]["response"]["body"]["choices"][0]["message"]["content"]
        assert answer == "mathematician: math 2"
        err = (await client.get(f"/v1/files/{batch['error_file_id']}/content")).text
        assert json.loads(err)["response"]["status_code"] == 404
        # Batch by expert: all of one expert's questions, then all of the other's.
        experts = ["court" in q for q in questions(calls)]
        assert sum(a != b for a, b in itertools.pairwise(experts)) == 1
        missing = await client.get("/v1/batches/batch_nope")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


async def test_each_request_is_routed_once(tmp_path):
    routed: list[str] = []

    async def counting_route(text: str, model: str) -> RoutingDecision:
        routed.append(text)
        return await route(text, model)

    calls: list[ExpertRequest] = []
    service = Pipeline(REGISTRY, counting_route, expert_clients(calls))
    runner = BatchRunner(BatchStore(tmp_path), service)
    file_id = runner.store.create_file(jsonl(QUESTIONS), "in.jsonl", "batch")["id"]
    batch_id = runner.create({"input_file_id": file_id, "endpoint": "/v1/chat/completions"})["id"]
    batch = await runner.wait(batch_id)
    assert batch["request_counts"]["completed"] == len(QUESTIONS)
    assert sorted(routed) == sorted(QUESTIONS)  # grouping's decision is the one answered with


async def test_cancel_stops_the_batch_and_keeps_what_finished(tmp_path):
    calls: list[ExpertRequest] = []
    gate = asyncio.Event()
    client, runner = client_for(service(calls, gate, free=2), tmp_path)
    async with client:
        file_id = await upload(client, jsonl(QUESTIONS))
        created = (await client.post("/v1/batches", json={"input_file_id": file_id,
                   "endpoint": "/v1/chat/completions"})).json()  # fmt: skip
        for _ in range(200):
            progress = (await client.get(f"/v1/batches/{created['id']}")).json()
            if progress["request_counts"]["completed"] == 2:
                break
            await asyncio.sleep(0.01)
        assert progress["status"] == "in_progress" and progress["request_counts"]["completed"] == 2
        cancelling = (await client.post(f"/v1/batches/{created['id']}/cancel")).json()
        assert cancelling["status"] == "cancelling"
        batch = await runner.wait(created["id"])
        assert batch["status"] == "cancelled"
        assert batch["request_counts"] == {"total": 6, "completed": 2, "failed": 0}
        out = (await client.get(f"/v1/files/{batch['output_file_id']}/content")).text
        assert len(out.splitlines()) == 2


async def test_a_restarted_service_resumes_without_losing_or_repeating_work(tmp_path):
    calls: list[ExpertRequest] = []
    gate = asyncio.Event()  # never set: the first service stops after 3 answers, holding the rest
    first = BatchRunner(BatchStore(tmp_path), service(calls, gate, free=3), concurrency=2)
    file_id = first.store.create_file(jsonl(QUESTIONS), "in.jsonl", "batch")["id"]
    batch_id = first.create({"input_file_id": file_id, "endpoint": "/v1/chat/completions"})["id"]
    for _ in range(200):
        if len(first.store.read_results(batch_id)) == 3:
            break
        await asyncio.sleep(0.01)
    await first.close()  # the service goes down with the batch in progress
    assert first.store.get_batch(batch_id)["status"] == "in_progress"
    answered_before = questions(calls[:3])  # the 3 the gate let through
    # A torn line from the crash must not cost a finished result.
    with open(tmp_path / "batches" / f"{batch_id}.results.jsonl", "a") as fh:
        fh.write('{"custom_id": "q9", "resp')

    later: list[ExpertRequest] = []
    second = BatchRunner(BatchStore(tmp_path), service(later), concurrency=2)
    second.start()
    batch = await second.wait(batch_id)
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 6, "completed": 6, "failed": 0}
    answered_after = questions(later)
    # each question answered exactly once overall
    assert sorted(answered_before + answered_after) == sorted(QUESTIONS)
    assert not set(answered_after) & set(answered_before)
    out = second.store.file_content(batch["output_file_id"]).decode().splitlines()
    assert [json.loads(line)["custom_id"] for line in out] == [f"q{i}" for i in range(6)]


@pytest.mark.parametrize("body,code", [
    ({"input_file_id": "file-x", "endpoint": "/v1/chat/completions"}, 404),
    ({"input_file_id": "file-x", "endpoint": "/v1/embeddings"}, 400),
])  # fmt: skip
async def test_bad_batch_requests_get_openai_errors(tmp_path, body, code):
    client, _ = client_for(service([]), tmp_path)
    async with client:
        r = await client.post("/v1/batches", json=body)
    assert r.status_code == code and "message" in r.json()["error"]


@pytest.mark.parametrize("bad", ["0" * 300 + "\x80İ", "../files/x", "a b", ""])
def test_ids_the_store_never_hands_out_are_not_found_not_a_server_error(tmp_path, bad):
    # An id of over 255 bytes made stat() fail with "File name too long": a 500 (found by the fuzz).
    store = BatchStore(tmp_path)
    for call in (store.get_file, store.delete_file, store.file_content, store.get_batch):
        with pytest.raises(NotFoundError):
            call(bad)
