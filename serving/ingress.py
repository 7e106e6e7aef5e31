"""Stage 1 (and the last): ingress. HTTP in, OpenAI-shaped JSON or SSE out.

`create_api(pipeline)` puts the OpenAI HTTP API in front of a `serving.pipeline.Pipeline`: it reads
and validates the body (size first, then the schema and the registry's limits), hands the request
to the pipeline and returns its answer. Errors are mapped here and only here: a `QuorumError`
becomes its status and OpenAI's `{"error": {message, type, param, code}}`
(`protocol.error_response`); anything else is a 500 that names the request id (the traceback goes
to the log, never to the client).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from experts.errors import ExpertError, InvalidRequestError, QuorumError, RequestTooLargeError
from experts.registry import RouterConfig
from serving import compat_anthropic, compat_completions, compat_responses, protocol
from serving.audit import AuditLog, AuditRecordNotFoundError
from serving.auth import OPEN_PATHS, Authenticator
from serving.auth import install as install_auth
from serving.compat import Surface
from serving.contract import chat_schema, error_response_for, install_contract
from serving.model_list import model_page, model_page_parameters
from serving.pipeline import Pipeline
from serving.protocol import error_response, internal_error

log = logging.getLogger(__name__)

AdminAuth = Callable[[Request], Awaitable[None]]
"""Checks an `/admin/...` request; raises a `QuorumError` (401/403) to refuse it."""


class SchedulerNotConfiguredError(QuorumError):
    """`GET /admin/scheduler` on a server without expert residency."""

    status = 404
    type = "invalid_request_error"
    code = "scheduler_not_configured"


def chat_request_openapi(limits: RouterConfig) -> dict:
    """OpenAPI `requestBody` for a chat request (`chat_schema`)."""
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": chat_schema(limits)}}}}  # fmt: skip


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
    if request.n > limits.max_choices:
        raise InvalidRequestError(f"'n' is {request.n}; at most {limits.max_choices} choices are "
                                  "allowed (router.max_choices)", param="n")  # fmt: skip
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


def allowed_methods(api: FastAPI, request: Request) -> list[str]:
    """The methods of every route that matches `request`'s path (for a 405's `Allow`)."""
    methods: set[str] = set()
    for route in api.routes:
        if getattr(route, "methods", None) and route.matches(request.scope)[0] is not Match.NONE:
            methods |= route.methods
    return sorted(methods)


def create_api(
    service: Pipeline,
    audit: AuditLog | None = None,
    admin_auth: AdminAuth | None = None,
    auth: Authenticator | None = None,
    scheduler: Callable[[], Awaitable[dict]] | None = None,
) -> FastAPI:
    """The OpenAI-compatible HTTP API over the pipeline `service`, plus `GET /admin/routing/{request_id}` when
    an `audit` log is given and `GET /admin/scheduler` (the expert pool's queues, residency and
    totals) when a `scheduler` snapshot function is. `admin_auth` guards `/admin/...`; without it
    they are open, unless `auth` (API keys) requires an admin key for them."""
    limits = service.registry.router
    api = FastAPI(
        title="Quorum", version="0.1.0", description="Skill-routed mixture of expert LLMs."
    )
    install_auth(api, auth)  # API keys, rate limits, token budgets (off without keys)
    install_contract(api, OPEN_PATHS)  # /openapi.json documents every status and error body

    @api.exception_handler(QuorumError)
    async def _quorum_error(request: Request, exc: QuorumError) -> JSONResponse:
        if not isinstance(exc, ExpertError):  # expert failures are reported by `finished`
            service.observer.rejected(exc)
        return error_response_for(request.url.path, exc)

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        error = QuorumError(f"{request.method} {request.url.path}: {exc.detail}")
        error.status, error.type = exc.status_code, kind
        error.headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every method the path has, not only the first route's
            error.headers["Allow"] = ", ".join(allowed_methods(api, request))
        return error_response_for(request.url.path, error)

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Parameters FastAPI validates (query, form fields): a 400 like every other, never a 422.
        first = exc.errors()[0]
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        param = ".".join(loc) or None
        error = InvalidRequestError(f"'{param or 'request'}': {first.get('msg')}", param=param)
        return error_response_for(request.url.path, error)

    @api.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        error = internal_error(request.headers.get("x-request-id", "?"))
        return error_response_for(request.url.path, error)

    @api.get("/health")
    async def health() -> dict:
        # `breakers`: each used expert's circuit breaker (closed, open or half_open) on this replica.
        return {"status": "ok", "experts": [e.name for e in service.registry.experts],
                "breakers": service.faults.states()}  # fmt: skip

    @api.get("/livez")
    async def livez() -> dict:
        """Liveness: the process is up and serving HTTP (experts may still be loading)."""
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz() -> Response:
        """Readiness: 200 once every expert (or router.readiness.min_ready of them) is loaded;
        503 with Retry-After before. Per-expert state and since when, either way."""
        readiness = service.readiness
        if readiness is None:  # nothing loads behind this pipeline (tests, remote experts only)
            return JSONResponse({"status": "ready", "experts": {}})
        ready = readiness.ready()
        body = {"status": "ready" if ready else "not_ready", "experts": readiness.snapshot()}
        headers = None if ready else {"Retry-After": str(readiness.config.retry_after_s)}
        return JSONResponse(body, status_code=200 if ready else 503, headers=headers)

    ids = [row["id"] for row in service.models()]

    @api.get("/v1/models", openapi_extra=model_page_parameters(ids))
    async def models(request: Request) -> dict:
        """Every model; Anthropic's `limit` / `after_id` / `before_id` page through them."""
        return model_page(service.models(), request.query_params)

    @api.get("/v1/models/{model}")
    async def model(model: str) -> dict:
        """One row of `/v1/models` (the clients' `models.retrieve`)."""
        return service.model(model)

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

    # The other API surfaces, each translated into a chat request for the same pipeline.
    async def json_body(request: Request) -> dict:
        return protocol.json_object(await read_body(request, limits.max_body_bytes))

    def chat_of(data: dict) -> protocol.ChatCompletionRequest:
        chat_request = protocol.parse_chat_request(data, limits.max_messages)
        check_limits(chat_request, limits)
        return chat_request

    surface = Surface(json_body, chat_of)
    for module in (compat_completions, compat_responses, compat_anthropic):
        module.install(api, service, surface)

    @api.post("/v1/route", openapi_extra=chat_body)
    async def route(request: Request) -> dict:
        """Quorum extension: the routing decision for a chat request, without generating."""
        body = await read_body(request, limits.max_body_bytes)
        chat_request = protocol.parse_chat_request(body, limits.max_messages)
        check_limits(chat_request, limits)
        decision = await service.route_request(chat_request)
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
