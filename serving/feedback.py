"""`POST /v1/feedback`: a user's score for one answer becomes an outcome the next fit learns from.

    POST /v1/feedback {"id": "chatcmpl-…", "score": 0.0-1.0, "comment": "optional"}
    -> 200 {"object": "feedback", "id", "expert", "score", "recorded": true}

`FeedbackObserver` (an `Observer` in the pipeline) keeps, for each routed answer that ended well,
the served record of `skills/feedback.py` (expert, model, embedding, API key) for
`router.feedback.window_s`. Errors: 400 for a score outside [0, 1] or a bad body, 404 for an id
with no served record (unknown, named an expert so nothing was classified, or older than the
window), 403 when keys are on and the feedback comes with another key than the request.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from experts.errors import InvalidRequestError, PermissionDeniedError, QuorumError
from experts.registry import Registry
from router import RoutingDecision
from serving.auth import current_key
from serving.ingress import read_body
from serving.observe import Observer
from skills.feedback import record_feedback, record_served, served_payload, served_record
from skills.store import StateStore

__all__ = ["FeedbackNotFoundError", "FeedbackObserver", "FeedbackRequest", "install_feedback"]

log = logging.getLogger(__name__)


class FeedbackNotFoundError(QuorumError):
    status = 404
    type = "invalid_request_error"
    code = "answer_not_found"


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=200, description="The completion's `id`.")
    score: float = Field(ge=0, le=1, description="How good the answer was: 0 (wrong) to 1.")
    comment: str | None = Field(None, max_length=4000, description="Free text, kept with it.")


class FeedbackObserver(Observer):
    """Keeps what feedback needs for each routed answer that ended well (in the background, so
    the request never waits for the store), and the most recent ones in process memory, so
    feedback sent right after an answer finds it even before the store write lands."""

    def __init__(
        self, store: StateStore, registry: Registry, encoder: str, recent: int = 4096
    ) -> None:
        self.store = store
        self.config = registry.router.feedback
        self.encoder = encoder
        self.experts = {e.name for e in registry.experts}
        self._pending: dict[str, tuple[RoutingDecision, str | None]] = {}
        self._recent: OrderedDict[str, dict] = OrderedDict()
        self._recent_max = recent
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quorum-feedback")

    def routed(self, request_id: str, decision: RoutingDecision, route_s: float) -> None:
        if self.config.enabled and decision.embedding is not None:
            self._pending[request_id] = (decision, current_key())
            if len(self._pending) > 4 * self._recent_max:  # answers that never started
                self._pending.pop(next(iter(self._pending)))

    def finished(self, request_id, expert, status, last, latency_s) -> None:
        entry = self._pending.pop(request_id, None)
        if entry is None or status != "ok":
            return
        decision, key = entry
        single = expert in self.experts
        payload = served_payload(
            experts=[expert] if single else list(decision.experts), model=decision.model,
            embedding=decision.embedding, encoder=self.encoder, key=key, aggregated=not single,
        )  # fmt: skip
        self._recent[request_id] = payload
        while len(self._recent) > self._recent_max:
            self._recent.popitem(last=False)
        self._writer.submit(self._write, request_id, payload)

    def _write(self, request_id: str, payload: dict) -> None:
        try:
            record_served(self.store, request_id, payload, self.config.window_s)
        except Exception as exc:  # feedback is best effort; the answer was already served
            log.warning("could not keep the served record of %s: %s", request_id, exc)

    def served(self, request_id: str) -> dict | None:
        return self._recent.get(request_id) or served_record(self.store, request_id)

    def feedback(self, body: FeedbackRequest) -> dict:
        served = self.served(body.id)
        if served is None:
            raise FeedbackNotFoundError(
                f"no routed answer with id {body.id!r} in the last {self.config.window_s:g}s "
                "(router.feedback.window_s); send the `id` of a chat completion that Quorum "
                "routed (requests that name an expert are not classified, so they take no "
                "feedback)",
                param="id",
            )
        key = current_key()
        if served.get("key") is not None and served["key"] != key:
            raise PermissionDeniedError(
                f"answer {body.id!r} was requested with another API key; send feedback with the "
                "key that made the request",
                code="feedback_key_mismatch",
            )
        record = record_feedback(self.store, body.id, served, body.score, body.comment)
        return {"object": "feedback", "id": body.id, "experts": record["experts"],
                "score": record["score"], "recorded": True}  # fmt: skip


def parse_feedback(raw: bytes) -> FeedbackRequest:
    try:
        data: Any = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"the body is not valid JSON ({exc})") from None
    try:
        return FeedbackRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequestError(
            f'{param or "body"}: {first["msg"]}; send {{"id": "chatcmpl-...", "score": '
            '0.0-1.0, "comment": "optional"}',
            param=param,
        ) from None


def install_feedback(app: FastAPI, observer: FeedbackObserver, max_body_bytes: int) -> None:
    """Add `POST /v1/feedback` to `app` (built by `serving.ingress.create_api`)."""
    routes = APIRouter()
    schema = FeedbackRequest.model_json_schema()

    @routes.post(
        "/v1/feedback",
        openapi_extra={"requestBody": {"required": True,
                                       "content": {"application/json": {"schema": schema}}}},
    )  # fmt: skip
    async def feedback(request: Request) -> dict:
        """Quorum extension: score one routed answer; it becomes training data for the policy."""
        body = parse_feedback(await read_body(request, max_body_bytes))
        return await asyncio.to_thread(observer.feedback, body)  # the store may be remote

    app.include_router(routes)
