"""Stage 1 (and the last): ingress. HTTP in, OpenAI-shaped JSON or SSE out.

`ChatService` runs one request through the pipeline with its backends passed in (a route function
and one `ExpertClient` per expert); `create_api(service)` puts the OpenAI HTTP API in front of it.
Errors are mapped here and only here: a `QuorumError` becomes its status and OpenAI's
`{"error": {message, type, param, code}}`; anything else is a 500 that names the request id
(the traceback goes to the log, never to the client).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from experts.engine import Delta
from experts.errors import (
    ExpertError,
    InvalidRequestError,
    QuorumError,
    RequestTooLargeError,
    RoutingTimeoutError,
)
from experts.registry import Registry, RouterConfig
from router import RoutingDecision
from serving import protocol
from serving.aggregate import AggregatedAnswer
from serving.audit import AuditLog, AuditRecordNotFoundError
from serving.auth import Authenticator, record_tokens
from serving.auth import install as install_auth
from serving.engines import ExpertClient, ExpertRequest
from serving.faults import FallbackStream, FaultPolicy, fallback_order, metric_fallback
from serving.observe import Observer

log = logging.getLogger(__name__)

RouteFn = Callable[[str, str], Awaitable[RoutingDecision]]
AdminAuth = Callable[[Request], Awaitable[None]]
"""Checks an `/admin/...` request; raises a `QuorumError` (401/403) to refuse it."""


class ChatService:
    """One request through route → expert → response, backends injected."""

    def __init__(
        self,
        registry: Registry,
        route: RouteFn,
        clients: dict[str, ExpertClient],
        observer: Observer | None = None,
        faults: FaultPolicy | None = None,
    ) -> None:
        self.registry = registry
        self.route = route
        self.clients = clients
        self.observer = observer or Observer()
        # Retry, fallback to the next-best expert, circuit breakers (serving/faults.py).
        self.faults = faults or FaultPolicy(clients, registry, on_fallback=metric_fallback)

    def models(self) -> list[dict]:
        created = 0
        rows = [
            {"id": v.name, "object": "model", "created": created, "owned_by": "quorum",
             "quorum": {"kind": "router", "description": v.description}}
            for v in self.registry.virtual_models
        ]  # fmt: skip
        rows += [
            {"id": e.name, "object": "model", "created": created, "owned_by": "quorum",
             "quorum": {"kind": "expert", "backend": e.backend, "context_length": e.context_length,
                        "cost": e.cost.model_dump(), "can_aggregate": e.can_aggregate}}
            for e in self.registry.experts
        ]  # fmt: skip
        return rows

    async def decide(self, request: protocol.ChatCompletionRequest) -> RoutingDecision:
        """Route `request` (classify + recruit) within `router.route_timeout_s`."""
        limit = self.registry.router.route_timeout_s
        try:
            return await asyncio.wait_for(
                self.route(request.last_user_text(), request.model), limit
            )
        except TimeoutError:
            raise RoutingTimeoutError(
                f"routing took longer than {limit:g}s (router.route_timeout_s); the router is "
                "overloaded: retry, or add router replicas"
            ) from None

    async def _prepare(
        self, request: protocol.ChatCompletionRequest, decision: RoutingDecision | None = None
    ) -> tuple[str, RoutingDecision, AsyncIterator[Delta], dict]:
        request_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        t0 = time.perf_counter()
        if decision is None:
            decision = await self.decide(request)
        route_ms = (time.perf_counter() - t0) * 1000
        self.observer.routed(request_id, decision, route_ms / 1000)
        expert_request = ExpertRequest(
            request_id=request_id,
            messages=request.plain_messages(),
            max_tokens=request.token_limit(self.registry.router.default_max_tokens),
            temperature=request.temperature,
            top_p=request.top_p,
            stop=request.stop,
            seed=request.seed,
        )
        if len(decision.experts) > 1:  # k > 1 experts answer, one aggregates (serving/aggregate.py)
            answer = AggregatedAnswer(self.registry, self.clients, decision, expert_request)
        else:  # Named experts never change; routed ones may fall back along the ranking.
            answer = self.faults.stream(
                expert_request,
                fallback_order(decision.experts, decision.recruitment),
                allow_fallback=decision.recruitment is not None,
                buffered=not request.stream,  # nothing is sent before the end: retry even midway
            )
        deltas = self._observed(request_id, answer, t0)
        routing = decision.to_dict() | {"fallbacks": answer.fallbacks}  # filled as they happen
        extension = {"request_id": request_id, "routing": routing,
                     "route_ms": round(route_ms, 3)}  # fmt: skip
        if isinstance(answer, AggregatedAnswer):
            extension["aggregation"] = answer.info  # filled as the experts answer
        return request_id, decision, deltas, extension

    async def _observed(
        self, request_id: str, answer: FallbackStream, started: float
    ) -> AsyncIterator[Delta]:
        """Pass deltas through, reporting first token and the end (ok or the error) once."""
        last: Delta | None = None
        status = "ok"
        try:
            async for delta in answer:
                if last is None:
                    self.observer.first_token(
                        request_id, answer.expert, time.perf_counter() - started
                    )
                last = delta
                yield delta
        except QuorumError as exc:
            status = exc.code or exc.type
            raise
        except BaseException:
            status = "cancelled"
            raise
        finally:
            if last is not None:
                record_tokens(last.prompt_tokens, last.completion_tokens)  # the key's budget
            self.observer.finished(
                request_id, answer.expert, status, last, time.perf_counter() - started
            )

    async def complete(
        self, request: protocol.ChatCompletionRequest, decision: RoutingDecision | None = None
    ) -> tuple[dict, dict]:
        """Non-streaming: the completion body and the response headers. A caller that already
        routed the request (the batch runner) passes its `decision`."""
        request_id, decision, deltas, extension = await self._prepare(request, decision)
        parts: list[str] = []
        last: Delta | None = None
        async for delta in deltas:
            parts.append(delta.text)
            last = delta
        if last is None:
            raise ExpertError(f"expert '{decision.experts[0]}' closed its stream without answering")
        body = protocol.completion(
            request_id, answered_by(decision, extension), "".join(parts), last.finish_reason,
            protocol.usage(last.prompt_tokens, last.completion_tokens), extension,
        )  # fmt: skip
        return body, routing_headers(request_id, decision, extension)

    async def stream(
        self, request: protocol.ChatCompletionRequest
    ) -> tuple[AsyncIterator[bytes], dict]:
        """Streaming: SSE bytes and headers. The first delta is awaited before returning, so an
        expert that fails at once still gets a proper HTTP error status instead of a 200."""
        request_id, decision, deltas, extension = await self._prepare(request)
        iterator = aiter(deltas)
        try:
            first = await anext(iterator)
        except StopAsyncIteration:
            raise ExpertError(
                f"expert '{decision.experts[0]}' closed its stream without answering"
            ) from None
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        model, created = answered_by(decision, extension), int(time.time())

        async def events() -> AsyncIterator[bytes]:
            yield protocol.sse(protocol.chunk(request_id, model, created, {"role": "assistant", "content": ""},
                                              extension=extension))  # fmt: skip
            delta: Delta | None = first
            last = first
            try:
                while delta is not None:
                    last = delta
                    if delta.text:
                        yield protocol.sse(
                            protocol.chunk(request_id, model, created, {"content": delta.text})
                        )
                    delta = await anext(iterator, None)
            except QuorumError as exc:
                log.warning("request %s: stream failed: %s", request_id, exc.message)
                yield protocol.sse(exc.to_openai())
                return
            except Exception:
                log.exception("request %s: stream failed", request_id)
                yield protocol.sse(internal_error(request_id).to_openai())
                return
            # k > 1: the aggregation record is complete only now (failed experts, the winner).
            final = {"aggregation": extension["aggregation"]} if "aggregation" in extension else None
            yield protocol.sse(protocol.chunk(request_id, model, created, {},
                                              last.finish_reason or "stop", extension=final))  # fmt: skip
            if include_usage:
                yield protocol.sse(protocol.chunk(request_id, model, created, None,
                                                  usage=protocol.usage(last.prompt_tokens, last.completion_tokens)))  # fmt: skip
            yield protocol.sse("[DONE]")

        return events(), routing_headers(request_id, decision, extension)


class SchedulerNotConfiguredError(QuorumError):
    """`GET /admin/scheduler` on a server without expert residency."""

    status = 404
    type = "invalid_request_error"
    code = "scheduler_not_configured"


def answered_by(decision: RoutingDecision, extension: dict) -> str:
    """The expert whose answer is returned: the chosen one, or the last fallback's target."""
    fallbacks = extension.get("routing", {}).get("fallbacks") or []
    return fallbacks[-1]["to"] if fallbacks else decision.experts[0]


def routing_headers(
    request_id: str, decision: RoutingDecision, extension: dict | None = None
) -> dict[str, str]:
    experts = decision.experts
    fallbacks = (extension or {}).get("routing", {}).get("fallbacks") or []
    if fallbacks:
        experts = [answered_by(decision, extension or {})]
    headers = {"x-quorum-request-id": request_id, "x-quorum-expert": ",".join(experts)}
    if fallbacks:
        headers["x-quorum-fallbacks"] = str(len(fallbacks))
    if decision.skills:
        headers["x-quorum-skill"] = decision.skills[0]["skill"]
        headers["x-quorum-skill-probability"] = f"{decision.skills[0]['probability']:.4f}"
    if decision.confidence is not None:
        headers["x-quorum-confidence"] = f"{decision.confidence:.4f}"
    return headers


def internal_error(request_id: str) -> QuorumError:
    return QuorumError(f"internal error while serving request {request_id}; see the server log")


def error_response(exc: QuorumError) -> JSONResponse:
    return JSONResponse(exc.to_openai(), status_code=exc.status,
                        headers=getattr(exc, "headers", None))  # fmt: skip


def chat_request_openapi(limits: RouterConfig) -> dict:
    """OpenAPI `requestBody` for a chat request: `ChatCompletionRequest`'s JSON schema, inlined."""
    schema = protocol.ChatCompletionRequest.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node):
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    schema = inline(schema)
    # The limits the handler enforces beyond the model, so generated valid bodies are valid.
    props = schema["properties"]
    props["messages"]["maxItems"] = limits.max_messages
    for name in ("max_tokens", "max_completion_tokens"):
        for option in props[name].get("anyOf", []):
            if option.get("type") == "integer":
                option["maximum"] = limits.max_tokens_cap
    props["n"] |= {"maximum": 1}
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": schema}}}}  # fmt: skip


def check_limits(request: protocol.ChatCompletionRequest, limits: RouterConfig) -> None:
    """The registry's per-request limits beyond body size and message count."""
    for i, message in enumerate(request.messages):
        length = len(message.text())
        if length > limits.max_message_chars:
            raise InvalidRequestError(
                f"messages[{i}] has {length} characters; at most {limits.max_message_chars} are "
                "allowed (router.max_message_chars); shorten it",
                param="messages", code="message_too_long",
            )  # fmt: skip
    asked = request.max_completion_tokens or request.max_tokens
    if asked is not None and asked > limits.max_tokens_cap:
        param = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
        raise InvalidRequestError(
            f"'{param}' is {asked}; at most {limits.max_tokens_cap} is allowed "
            "(router.max_tokens_cap)",
            param=param,
        )


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than `limit` bytes without reading all of it first."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestTooLargeError(f"request body is {declared} bytes; the limit is {limit} bytes")
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise RequestTooLargeError(f"request body exceeds the limit of {limit} bytes")
    return bytes(body)


def create_api(
    service: ChatService,
    audit: AuditLog | None = None,
    admin_auth: AdminAuth | None = None,
    auth: Authenticator | None = None,
    scheduler: Callable[[], Awaitable[dict]] | None = None,
) -> FastAPI:
    """The OpenAI-compatible HTTP API over `service`, plus `GET /admin/routing/{request_id}` when
    an `audit` log is given and `GET /admin/scheduler` (the expert pool's queues, residency and
    totals) when a `scheduler` snapshot function is. `admin_auth` guards `/admin/...`; without it
    they are open, unless `auth` (API keys) requires an admin key for them."""
    limits = service.registry.router
    api = FastAPI(
        title="Quorum", version="0.1.0", description="Skill-routed mixture of expert LLMs."
    )
    install_auth(api, auth)  # API keys, rate limits, token budgets (off without keys)

    @api.exception_handler(QuorumError)
    async def _quorum_error(_: Request, exc: QuorumError) -> JSONResponse:
        if not isinstance(exc, ExpertError):  # expert failures are reported by `finished`
            service.observer.rejected(exc)
        return error_response(exc)

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        message = f"{request.method} {request.url.path}: {exc.detail}"
        body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
        return JSONResponse(body, status_code=exc.status_code)

    @api.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(internal_error(request.headers.get("x-request-id", "?")))

    @api.get("/health")
    async def health() -> dict:
        # `breakers`: each used expert's circuit breaker (closed, open or half_open) on this replica.
        return {"status": "ok", "experts": [e.name for e in service.registry.experts],
                "breakers": service.faults.states()}  # fmt: skip

    @api.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": service.models()}

    # The body is read by hand (size limit first), so the schema is declared for /openapi.json.
    chat_body = chat_request_openapi(limits)

    @api.post("/v1/chat/completions", openapi_extra=chat_body)
    async def chat(request: Request) -> Response:
        body = await read_body(request, limits.max_body_bytes)
        chat_request = protocol.parse_chat_request(body, limits.max_messages)
        check_limits(chat_request, limits)
        if chat_request.stream:
            events, headers = await service.stream(chat_request)
            headers |= {"cache-control": "no-cache", "x-accel-buffering": "no"}
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        completion, headers = await service.complete(chat_request)
        return JSONResponse(completion, headers=headers)

    @api.post("/v1/route", openapi_extra=chat_body)
    async def route(request: Request) -> dict:
        """Quorum extension: the routing decision for a chat request, without generating."""
        body = await read_body(request, limits.max_body_bytes)
        chat_request = protocol.parse_chat_request(body, limits.max_messages)
        check_limits(chat_request, limits)
        decision = await service.route(chat_request.last_user_text(), chat_request.model)
        return decision.to_dict()

    @api.get("/admin/scheduler")
    async def scheduler_state(request: Request) -> Response:
        """Quorum extension: per expert queue depth, oldest wait, residency; batches and swaps."""
        try:
            if admin_auth is not None:
                await admin_auth(request)
            if scheduler is None:
                raise SchedulerNotConfiguredError(
                    "this server has no `residency` section: every hosted expert keeps its own "
                    "engine and nothing queues per expert; add `residency: {slots: N}` to the "
                    "registry to share N slots batch by expert")  # fmt: skip
            return JSONResponse(await scheduler())
        except QuorumError as exc:
            return error_response(exc)

    @api.get("/admin/routing/{request_id}")
    async def routing_record(request_id: str, request: Request) -> Response:
        """Quorum extension: the routing audit record of one finished request."""
        # Errors are returned, not raised: `rejected` counts chat requests only.
        try:
            if admin_auth is not None:
                await admin_auth(request)
            if audit is None:
                raise AuditRecordNotFoundError("this server keeps no routing audit")
            record = audit.get(request_id)
            if record is None:
                raise AuditRecordNotFoundError(
                    f"no routing record for request id {request_id!r}; records are written when "
                    f"the answer ends and kept {audit.describe()}", param="request_id")  # fmt: skip
        except QuorumError as exc:
            return error_response(exc)
        return JSONResponse(record)

    return api
