"""The published OpenAPI schema is the contract: what `/openapi.json` says each operation answers.

Every operation documents each status it can return (FastAPI documents only 200 and a 422 that
Quorum never sends); every error status carries the error body schema: OpenAI's
`{"error": {message, type, param, code}}`, except `/v1/messages` and its `count_tokens`, which
answer in Anthropic's `{"type": "error", "error": {type, message}}`. `error_response_for(path,
exc)` is the one place that picks the shape, so the auth middleware, the routes and the app's
handlers agree.
`tests/fuzz/test_api_contract.py` holds the app to this schema with schemathesis, all checks on.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from experts.errors import QuorumError
from experts.registry import RouterConfig
from serving import protocol
from serving.chat_params import REFUSED
from serving.protocol import error_response

__all__ = [
    "ANTHROPIC_PATHS",
    "anthropic_error",
    "error_response_for",
    "inline_schema",
    "install_contract",
    "noop_only",
    "request_body",
]

#: paths that answer errors in Anthropic's shape
ANTHROPIC_PATHS = frozenset({"/v1/messages", "/v1/messages/count_tokens"})

OPENAI_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["message", "type", "param", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]},
                       "code": {"type": ["string", "null"]}},
    }},
}  # fmt: skip
ANTHROPIC_ERROR = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {"type": {"const": "error"}, "error": {
        "type": "object", "required": ["type", "message"],
        "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
    }},
}  # fmt: skip

WHY = {
    400: "Invalid request: a malformed body or parameter, or one Quorum refuses (names `param`)",
    401: "No valid API key (only when access control is on)",
    403: "The key may not do this (admin paths; feedback on another key's answer)",
    404: "No such model, expert, file, batch or record",
    413: "The body is over router.max_body_bytes",
    429: "The key's rate limit or daily token budget is spent; `Retry-After` says when to retry",
    500: "Unexpected failure; the message names the request id (details in the server log)",
    502: "The expert failed",
    503: "No expert can serve now (loading, circuit open, overloaded); `Retry-After` may say when",
    504: "The expert or the router took too long",
}
GENERATING = {"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages"}
STREAMING = GENERATING  # 200 is JSON, or SSE with "stream": true
ROUTING = {"/v1/route", "/v1/messages/count_tokens"}  # route without generating
SIZE_LIMITED = GENERATING | ROUTING | {"/v1/feedback", "/v1/batches"}
LOOKUPS = GENERATING | ROUTING | {"/v1/feedback", "/v1/batches", "/admin/scheduler"}
FEEDBACK_OWNED = {"/v1/feedback"}


def anthropic_error(exc: QuorumError) -> JSONResponse:
    """`exc` in Anthropic's error shape, with its headers (`Retry-After`, ...)."""
    kind = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
            404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
            503: "overloaded_error"}.get(exc.status, "api_error")  # fmt: skip
    body = {"type": "error", "error": {"type": kind, "message": exc.message}}
    return JSONResponse(body, status_code=exc.status, headers=getattr(exc, "headers", None))


def error_response_for(path: str, exc: QuorumError) -> JSONResponse:
    """`exc` as the API at `path` shapes errors: Anthropic's for `/v1/messages...`, else OpenAI's."""
    return anthropic_error(exc) if path in ANTHROPIC_PATHS else error_response(exc)


def statuses(path: str, operation: dict[str, Any], open_paths: frozenset[str]) -> set[int]:
    """The error statuses the operation at `path` can answer."""
    params = operation.get("parameters", [])
    out = {500}
    if operation.get("requestBody") or any(p.get("in") == "query" for p in params):
        out.add(400)
    if path not in open_paths:
        out |= {401, 429}
        if path.startswith(("/admin", "/v1/admin")) or path in FEEDBACK_OWNED:
            out.add(403)
    if path in SIZE_LIMITED:
        out.add(413)
    if path in LOOKUPS or any(p.get("in") == "path" for p in params):
        out.add(404)
    if path in GENERATING:
        out |= {502, 503, 504}
    if path in ROUTING:
        out |= {503, 504}
    if path == "/readyz":
        out.add(503)
    return out


def document(schema: dict[str, Any], open_paths: frozenset[str]) -> dict[str, Any]:
    """`schema` (FastAPI's) with every operation's error statuses and bodies, FastAPI's 422 gone."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["OpenAIError"] = OPENAI_ERROR
    components["AnthropicError"] = ANTHROPIC_ERROR
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for path, item in schema.get("paths", {}).items():
        ref = "AnthropicError" if path in ANTHROPIC_PATHS else "OpenAIError"
        body = {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}
        for operation in item.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status in sorted(statuses(path, operation, open_paths)):
                responses[str(status)] = {"description": WHY[status], "content": body}
            if path in STREAMING:
                ok = responses.setdefault("200", {"description": "Successful Response"})
                ok["content"] = {"application/json": {"schema": {}},
                                 "text/event-stream": {"schema": {"type": "string"}}}  # fmt: skip
    return schema


def install_contract(api: FastAPI, open_paths: frozenset[str]) -> None:
    """Publish `api`'s schema with the statuses above (built on first request, so routes added
    after `create_api`, e.g. batches and feedback, are covered)."""

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            api.openapi_schema = document(
                get_openapi(title=api.title, version=api.version, description=api.description,
                            routes=api.routes), open_paths)  # fmt: skip
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema with its `$defs` inlined (the schema an operation publishes)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return inline(schema)


def request_body(
    model: type[BaseModel], overrides: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """`openapi_extra` declaring a JSON body of `model` (for handlers that read the body by hand,
    size limit first); `overrides` replace properties' schemas with what the handler enforces
    beyond the model (limits, refused values), so what the schema accepts the service accepts."""
    schema = inline_schema(model)
    schema["properties"] |= overrides or {}
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": schema}}}}  # fmt: skip


def noop_only(rules: dict[str, tuple[Any, str]]) -> dict[str, dict[str, Any]]:
    """Refused parameters (`name -> (no-op value, why)`), published as accepting only their
    no-op value or null: sending anything else is a 400."""
    return {name: {"enum": [*sorted(noop), None] if isinstance(noop, frozenset) else [noop, None]}
            for name, (noop, _) in rules.items()}  # fmt: skip


def chat_schema(limits: RouterConfig) -> dict:
    """The published schema of a chat request: `ChatCompletionRequest`'s, plus what the handler
    enforces beyond the model (the registry's limits, refused fields, cross-field rules), so that
    what the schema accepts the service accepts and what it rejects the service refuses."""
    schema = inline_schema(protocol.ChatCompletionRequest)
    props = schema["properties"]
    props |= noop_only(REFUSED)
    schema["additionalProperties"] = False  # anything else is refused (refused_fields)
    props["messages"]["maxItems"] = limits.max_messages
    message = props["messages"]["items"]
    message["additionalProperties"] = {"enum": [None, [], {}, ""]}  # accepted only when empty
    message["if"] = {"properties": {"role": {"const": "tool"}}}
    message["then"] = {"required": ["tool_call_id"],
                       "properties": {"tool_call_id": {"type": "string", "minLength": 1}}}  # fmt: skip
    for option in message["properties"]["content"]["anyOf"]:
        if option.get("type") == "string":
            option["maxLength"] = limits.max_message_chars
        if option.get("type") == "array":
            option["items"]["properties"]["text"]["maxLength"] = limits.max_message_chars
            option["items"]["additionalProperties"] = False
    for name in ("max_tokens", "max_completion_tokens"):
        for option in props[name].get("anyOf", []):
            if option.get("type") == "integer":
                option["maximum"] = limits.max_tokens_cap
    props["n"] |= {"maximum": limits.max_choices}
    props["logit_bias"]["anyOf"][0] |= {
        "propertyNames": {"pattern": "^-?[0-9]+$"},
        "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
    }
    props["stop"]["anyOf"][1]["maxItems"] = 4
    present = lambda name: {"required": [name], "properties": {name: {"not": {"type": "null"}}}}  # noqa: E731
    schema["allOf"] = [
        {"if": present("top_logprobs"), "then": {"required": ["logprobs"],
                                                  "properties": {"logprobs": {"const": True}}}},
        {"if": present("stream_options"), "then": {"required": ["stream"],
                                                    "properties": {"stream": {"const": True}}}},
        {"if": {"required": ["tool_choice"], "properties": {"tool_choice": {"not": {
            "enum": ["none", None]}}}}, "then": {"required": ["tools"], "properties": {
            "tools": {"type": "array", "minItems": 1}}}},
        {"if": {"required": ["response_format"], "properties": {"response_format": {
            "type": "object", "required": ["type"], "properties": {"type": {
                "const": "json_schema"}}}}}, "then": {"properties": {"response_format": {
            "required": ["json_schema"], "properties": {"json_schema": {"type": "object"}}}}}},
    ]  # fmt: skip
    return schema
