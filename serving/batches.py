"""The batch API: OpenAI-compatible `/v1/files` and `/v1/batches`, executed batch by expert.

    POST /v1/files (multipart: file, purpose=batch)   GET /v1/files[/{id}[/content]]   DELETE
    POST /v1/batches {input_file_id, endpoint: /v1/chat/completions, completion_window: 24h}
    GET /v1/batches[/{id}]   POST /v1/batches/{id}/cancel

Each input line is `{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}`.
A batch is validated when created (a bad line fails the batch with line-numbered `errors`, as
OpenAI does), then run: every pending request is routed, grouped by the expert that must answer
it, and the groups run one after another, largest first, `concurrency` requests at a time — so
each expert's work arrives together (with the scheduler underneath, one load serves the group).
Progress is `request_counts`; cancel stops starting requests, cancels those in flight and
finalises with what finished.

Durability (serving/batch_store.py): each finished request is appended to the batch's results
file, keyed by custom_id, before it counts. After a restart, `BatchRunner.start()` resumes every
unfinished batch, skipping the custom_ids already there: nothing finished is lost or repeated.
The output file (200s) and error file (the rest) are written in input order at the end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, ValidationError

from experts.errors import InvalidRequestError, QuorumError
from router import RoutingDecision
from serving import protocol
from serving.batch_store import BatchStore, NotFoundError
from serving.ingress import read_body

__all__ = ["BatchRunner", "BatchStore", "NotFoundError", "batch_routes", "install_batches"]

log = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
_ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")


def parse_input(content: bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The input file's requests, and OpenAI-shaped errors (`{code, message, line}`) per bad line."""
    lines, errors, seen = [], [], set()
    for n, raw in enumerate(content.decode(errors="replace").splitlines(), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            errors.append({"code": "invalid_json", "line": n, "message": f"not JSON: {exc}"})
            continue
        problem = None
        if not isinstance(row, dict) or not isinstance(row.get("custom_id"), str):
            problem = "each line needs a string custom_id"
        elif row["custom_id"] in seen:
            problem = f"custom_id '{row['custom_id']}' is used twice; custom_ids must be unique"
        elif row.get("method", "POST") != "POST" or row.get("url", ENDPOINT) != ENDPOINT:
            problem = f"only POST {ENDPOINT} is supported, got {row.get('method')} {row.get('url')}"
        elif not isinstance(row.get("body"), dict):
            problem = "body must be a JSON object (a chat completion request)"
        elif row["body"].get("stream"):
            problem = "stream must be false in a batch"
        if problem:
            errors.append({"code": "invalid_request", "line": n, "message": problem})
            continue
        seen.add(row["custom_id"])
        lines.append(row)
    return lines, errors


class BatchRunner:
    """Runs batches through the `Pipeline` (route → dispatch | aggregate → respond)."""

    def __init__(self, store: BatchStore, service: Any, concurrency: int = 8) -> None:
        self.store = store
        self.service = service
        self.concurrency = concurrency
        self._tasks: dict[str, asyncio.Task] = {}
        self._started = False

    def start(self) -> None:
        """Resume every unfinished batch (call on the serving event loop, e.g. at app startup)."""
        if self._started:
            return
        self._started = True
        for batch in self.store.list_batches():
            if batch["status"] in _ACTIVE:
                log.info("resuming batch %s (%s)", batch["id"], batch["status"])
                self._launch(batch["id"])

    def _launch(self, batch_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._run(batch_id))
        self._tasks[batch_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(batch_id, None))

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        self.start()
        if body.get("endpoint") != ENDPOINT:
            raise InvalidRequestError(f"endpoint must be '{ENDPOINT}', got {body.get('endpoint')!r}",
                                      param="endpoint")  # fmt: skip
        if body.get("completion_window", "24h") != "24h":
            raise InvalidRequestError("completion_window must be '24h'", param="completion_window")
        file_id = body.get("input_file_id")
        if not isinstance(file_id, str):
            raise InvalidRequestError("input_file_id is required (upload with POST /v1/files)",
                                      param="input_file_id")  # fmt: skip
        lines, errors = parse_input(self.store.file_content(file_id))
        now = int(time.time())
        batch = {"id": f"batch_{uuid.uuid4().hex[:24]}", "object": "batch", "endpoint": ENDPOINT,
                 "errors": None, "input_file_id": file_id, "completion_window": "24h",
                 "status": "in_progress", "output_file_id": None, "error_file_id": None,
                 "created_at": now, "in_progress_at": now, "expires_at": now + 86400,
                 "finalizing_at": None, "completed_at": None, "failed_at": None,
                 "cancelling_at": None, "cancelled_at": None,
                 "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
                 "metadata": body.get("metadata")}  # fmt: skip
        if errors or not lines:
            errors = errors or [{"code": "empty_file", "line": None, "message": "no requests"}]
            batch |= {"status": "failed", "failed_at": now, "in_progress_at": None,
                      "errors": {"object": "list", "data": errors}}  # fmt: skip
        self.store.save_batch(batch)
        if batch["status"] == "in_progress":
            self._launch(batch["id"])
        return batch

    def cancel(self, batch_id: str) -> dict[str, Any]:
        self.start()
        batch = self.store.get_batch(batch_id)
        if batch["status"] not in ("validating", "in_progress"):
            return batch
        batch |= {"status": "cancelling", "cancelling_at": int(time.time())}
        self.store.save_batch(batch)
        task = self._tasks.get(batch_id)
        if task is not None:
            task.cancel()  # _run finalises as cancelled
        else:
            self._launch(batch_id)
        return batch

    async def _run(self, batch_id: str) -> None:
        batch = self.store.get_batch(batch_id)
        lines, _ = parse_input(self.store.file_content(batch["input_file_id"]))
        try:
            if batch["status"] == "in_progress":
                await self._execute(batch, lines)
        except asyncio.CancelledError:
            if self.store.get_batch(batch_id)["status"] != "cancelling":
                raise  # the service is stopping: the batch resumes on the next start
        except Exception:
            log.exception("batch %s failed", batch_id)
        self._finalise(self.store.get_batch(batch_id), lines)

    def _counts(self, batch: dict[str, Any], total: int) -> dict[str, int]:
        results = self.store.read_results(batch["id"])
        ok = sum(
            1 for r in results.values() if r["response"] and r["response"]["status_code"] == 200
        )
        return {"total": total, "completed": ok, "failed": len(results) - ok}

    async def _execute(self, batch: dict[str, Any], lines: list[dict[str, Any]]) -> None:
        done = self.store.read_results(batch["id"])
        pending = [row for row in lines if row["custom_id"] not in done]
        groups, decisions = await self._group_by_expert(pending)
        counts = self._counts(batch, len(lines))
        gate = asyncio.Semaphore(self.concurrency)

        async def one(row: dict[str, Any]) -> None:
            async with gate:
                record = await self._answer(row, decisions.get(row["custom_id"]))
            cancelling = self.store.get_batch(batch["id"])["status"] == "cancelling"
            if cancelling and record["response"]["status_code"] != 200:
                return  # cut short by the cancel, not a failure of the request
            self.store.append_result(batch["id"], record)
            key = "completed" if record["response"]["status_code"] == 200 else "failed"
            counts[key] += 1
            self.store.save_batch(
                self.store.get_batch(batch["id"]) | {"request_counts": dict(counts)}
            )

        for _expert, rows in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            await asyncio.gather(*(one(row) for row in rows))
        current = self.store.get_batch(batch["id"])
        if current["status"] == "in_progress":
            self.store.save_batch(
                current | {"status": "finalizing", "finalizing_at": int(time.time())}
            )

    async def _group_by_expert(
        self, rows: Iterable[dict[str, Any]]
    ) -> tuple[dict[str, list[dict]], dict[str, RoutingDecision]]:
        """Route every request once: groups by (first) expert, and each row's decision, which
        answering reuses. Unroutable rows form a group of their own and fail with their error
        when answered."""
        rows = list(rows)
        decisions: dict[str, RoutingDecision] = {}

        async def expert_of(row: dict[str, Any]) -> str:
            try:
                request = self._request(row)
                decision = await self.service.route_request(request)
            except QuorumError:
                return ""
            decisions[row["custom_id"]] = decision
            return ",".join(decision.experts)

        keys = await asyncio.gather(*(expert_of(r) for r in rows))
        groups: dict[str, list[dict]] = {}
        for key, row in zip(keys, rows, strict=True):
            groups.setdefault(key, []).append(row)
        return groups, decisions

    def _request(self, row: dict[str, Any]) -> protocol.ChatCompletionRequest:
        from serving.ingress import check_limits

        limits = self.service.registry.router
        request = protocol.parse_chat_request(json.dumps(row["body"]).encode(), limits.max_messages)
        check_limits(request, limits)
        return request

    async def _answer(
        self, row: dict[str, Any], decision: RoutingDecision | None
    ) -> dict[str, Any]:
        record: dict[str, Any] = {"id": f"batch_req_{uuid.uuid4().hex[:24]}",
                                  "custom_id": row["custom_id"], "error": None}  # fmt: skip
        try:
            body, _headers = await self.service.complete(self._request(row), decision)
            record["response"] = {"status_code": 200, "request_id": body["id"], "body": body}
        except QuorumError as exc:
            record["response"] = {"status_code": exc.status, "request_id": None,
                                  "body": exc.to_openai()}  # fmt: skip
        except Exception:  # one bad request must not stop the batch; the log has the traceback
            log.exception("batch request %s failed", row["custom_id"])
            error = QuorumError(f"internal error on batch request '{row['custom_id']}'")
            record["response"] = {"status_code": 500, "request_id": None, "body": error.to_openai()}
        return record

    def _finalise(self, batch: dict[str, Any], lines: list[dict[str, Any]]) -> None:
        results = self.store.read_results(batch["id"])
        ok, bad = [], []
        for row in lines:  # input order
            r = results.get(row["custom_id"])
            if r is not None:
                (ok if r["response"]["status_code"] == 200 else bad).append(json.dumps(r))
        now = int(time.time())
        update: dict[str, Any] = {"request_counts": self._counts(batch, len(lines))}
        if ok:
            update["output_file_id"] = self.store.create_file(
                ("\n".join(ok) + "\n").encode(), f"{batch['id']}_output.jsonl", "batch_output"
            )["id"]
        if bad:
            update["error_file_id"] = self.store.create_file(
                ("\n".join(bad) + "\n").encode(), f"{batch['id']}_error.jsonl", "batch_output"
            )["id"]
        if batch["status"] == "cancelling":
            update |= {"status": "cancelled", "cancelled_at": now}
        else:
            update |= {"status": "completed", "completed_at": now}
        self.store.save_batch(batch | update)

    async def wait(self, batch_id: str) -> dict[str, Any]:
        """Until the batch's run ends (for tests and scripts); its final object."""
        task = self._tasks.get(batch_id)
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        return self.store.get_batch(batch_id)

    async def close(self) -> None:
        """Stop running batches without finalising them (they resume on the next start)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


Page = Annotated[int, Query(ge=1, le=10_000)]  # a list's page size


def _page(items: list[dict], limit: int, after: str | None) -> dict[str, Any]:
    if after is not None:
        ids = [i["id"] for i in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[:limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit}  # fmt: skip


class BatchRequest(BaseModel):
    """`POST /v1/batches`'s body (its schema is the one `/openapi.json` publishes)."""

    model_config = ConfigDict(extra="forbid")
    input_file_id: str
    endpoint: Literal["/v1/chat/completions"]
    completion_window: Literal["24h"] = "24h"
    metadata: dict[str, str] | None = None


def batch_routes(runner: BatchRunner, max_body_bytes: int) -> APIRouter:
    """`/v1/files` and `/v1/batches` over `runner` (errors: QuorumError → the app's handler)."""
    api = APIRouter()
    store = runner.store
    batch_body = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": BatchRequest.model_json_schema()}}}}  # fmt: skip

    @api.post("/v1/files")
    async def upload(
        file: UploadFile = File(...), purpose: Literal["batch", "batch_output"] = Form(...)
    ) -> dict:
        content = await file.read()
        return store.create_file(content, file.filename or "upload.jsonl", purpose)

    @api.get("/v1/files")
    async def files(limit: Page = 100, after: str | None = None) -> dict:
        return _page(store.list_files(), limit, after)

    @api.get("/v1/files/{file_id}")
    async def file(file_id: str) -> dict:
        return store.get_file(file_id)

    @api.get("/v1/files/{file_id}/content")
    async def content(file_id: str) -> Response:
        return Response(store.file_content(file_id), media_type="application/jsonl")

    @api.delete("/v1/files/{file_id}")
    async def delete(file_id: str) -> dict:
        return store.delete_file(file_id)

    @api.post("/v1/batches", openapi_extra=batch_body)
    async def create(request: Request) -> dict:
        data = protocol.json_object(await read_body(request, max_body_bytes))
        try:
            body = BatchRequest.model_validate(data)
        except ValidationError as exc:
            raise protocol.validation_error(exc) from None
        return runner.create(body.model_dump())

    @api.get("/v1/batches")
    async def batches(limit: Page = 20, after: str | None = None) -> dict:
        runner.start()
        return _page(store.list_batches(), limit, after)

    @api.get("/v1/batches/{batch_id}")
    async def get(batch_id: str) -> dict:
        runner.start()
        return store.get_batch(batch_id)

    @api.post("/v1/batches/{batch_id}/cancel")
    async def cancel(batch_id: str) -> dict:
        return runner.cancel(batch_id)

    return api


def install_batches(
    app: FastAPI, service: Any, root: str | Path, concurrency: int = 8
) -> BatchRunner:
    """Add the batch API to `app` (built by `serving.ingress.create_api`); unfinished batches
    under `root` resume when the app starts. Bodies are limited to the registry's
    `router.max_body_bytes`."""
    runner = BatchRunner(BatchStore(root), service, concurrency)
    app.include_router(batch_routes(runner, service.registry.router.max_body_bytes))
    app.router.on_startup.append(runner.start)
    return runner
