"""`POST /v1/responses`: OpenAI's Responses API, the stateless subset, through the chat pipeline.

Served: `input` as text or a list of items (messages with text content, `function_call` and
`function_call_output` items), `instructions` (the first system message), `max_output_tokens`,
`temperature`, `top_p`, function `tools`, `tool_choice` (also `allowed_tools`),
`parallel_tool_calls`, `text.format` (text, json_object, json_schema: structured output), `user`,
token logprobs (`include: ["message.output_text.logprobs"]` and/or `top_logprobs`), and `stream`
with the events OpenAI sends (`response.created`, `response.in_progress`,
`response.output_item.added`, `response.content_part.added`, `response.output_text.delta` / `.done`,
`response.function_call_arguments.delta` / `.done`, `response.content_part.done`,
`response.output_item.done`, `response.completed` or `response.incomplete`); delta events carry
OpenAI's random `obfuscation` padding unless `stream_options.include_obfuscation` is false.
`max_tool_calls` is accepted and echoed: it bounds calls to built-in tools, and none is served.
Nothing is stored: `store: true`, `previous_response_id`, `background`, other `include` values,
`reasoning`, `prompt_cache_key` / `_retention`, `safety_identifier` and built-in tools are
refused with a 400 naming them.

The request and its translation into chat are in `serving/responses_request.py`, the answer as
the API's objects and stream events in `serving/responses_output.py`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from experts.errors import InvalidRequestError
from experts.registry import RouterConfig
from serving.compat import Surface, in_their_words, refuse, validate
from serving.contract import chat_schema, noop_only, request_body
from serving.pipeline import Pipeline, answered_by, routing_headers
from serving.responses_output import call_item, events, message_item, response_body
from serving.responses_request import ResponsesRequest

__all__ = ["install"]

#: chat parameter -> this API's name for it, in error messages
NAMES = {"max_tokens": "max_output_tokens", "messages": "input", "response_format": "text"}

REFUSED = {
    "store": (False, "responses are not stored (stateless); send 'store': false"),
    "previous_response_id": (None, "responses are not stored; send the whole conversation "
                             "as 'input'"),
    "background": (False, "background responses are not served; drop 'background'"),
    "reasoning": (None, "the experts are not reasoning models; drop 'reasoning'"),
    "truncation": ("disabled", "the conversation is never truncated; send 'disabled'"),
    "conversation": (None, "conversations are not stored; send the whole one as 'input'"),
    "prompt": (None, "stored prompts are not served; send 'input'"),
    "metadata": ({}, "responses are not stored, so 'metadata' has no use; drop it"),
    "service_tier": (frozenset({"auto", "default"}), "there is one service tier; drop "
                     "'service_tier' or send 'auto'"),
    "prompt_cache_key": (None, "'prompt_cache_key' is not served; drop it"),
    "prompt_cache_retention": (None, "prompts are cached only by the engine's prefix cache; "
                               "drop it"),
    "safety_identifier": (None, "'safety_identifier' is not served; send 'user' instead"),
}  # fmt: skip


def published(limits: RouterConfig) -> dict[str, Any]:
    """`openapi_extra` for this body: the input items and limits the translation enforces."""
    chat = chat_schema(limits)["properties"]
    text = {"type": "string", "maxLength": limits.max_message_chars}
    part = {"type": "object", "required": ["type"], "properties": {
        "type": {"enum": ["input_text", "output_text", "text"]}, "text": text}}  # fmt: skip
    content = {"anyOf": [text, {"type": "array", "items": part}]}
    call_id = {"type": "string", "minLength": 1}
    items = {"anyOf": [
        {"type": "object", "required": ["role", "content"], "properties": {
            "type": {"const": "message"}, "content": content,
            "role": {"enum": ["system", "developer", "user", "assistant"]}}},
        {"type": "object", "required": ["type", "call_id", "name", "arguments"], "properties": {
            "type": {"const": "function_call"}, "call_id": call_id, "name": {"type": "string"},
            "arguments": {"type": "string"}}},
        {"type": "object", "required": ["type", "call_id", "output"], "properties": {
            "type": {"const": "function_call_output"}, "call_id": call_id, "output": content}},
    ]}  # fmt: skip
    extra = request_body(ResponsesRequest, noop_only(REFUSED) | {
        "input": {"anyOf": [text, {"type": "array", "items": items, "minItems": 1,
                                   "maxItems": limits.max_messages - 1}]},
        "instructions": {"anyOf": [text, {"type": "null"}]},
        "max_output_tokens": {"anyOf": [{"type": "integer", "minimum": 1,
                                         "maximum": limits.max_tokens_cap}, {"type": "null"}]},
        "temperature": chat["temperature"], "top_p": chat["top_p"], "user": chat["user"],
    })  # fmt: skip
    schema = extra["requestBody"]["content"]["application/json"]["schema"]
    tool = schema["properties"]["tools"]["anyOf"][0]["items"]["properties"]
    tool["name"] = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}
    fmt = schema["properties"]["text"]["anyOf"][0]["properties"]["format"]["anyOf"][0]
    fmt["properties"]["name"] = {"anyOf": [{"type": "string", "minLength": 1, "maxLength": 64},
                                           {"type": "null"}]}  # fmt: skip
    schema["allOf"] = [{"if": {"required": ["tool_choice"], "properties": {"tool_choice": {
        "not": {"enum": ["none", None]}}}}, "then": {"required": ["tools"], "properties": {
        "tools": {"type": "array", "minItems": 1}}}}]  # fmt: skip
    return extra


def install(api: FastAPI, service: Pipeline, surface: Surface) -> None:
    @api.post("/v1/responses", openapi_extra=published(service.registry.router))
    async def responses(request: Request) -> Response:
        data = await surface.body(request)
        refuse(data, REFUSED)
        tools = data.get("tools")
        for i, tool in enumerate(tools if isinstance(tools, list) else []):
            if isinstance(tool, dict) and tool.get("type") != "function":
                raise InvalidRequestError(f"'tools[{i}]' has type {tool.get('type')!r}; only "
                                          "function tools are served", param="tools")  # fmt: skip
        req = validate(ResponsesRequest, data)
        chat = in_their_words(surface.chat, req.chat() | {"stream": req.stream}, NAMES)
        if req.stream:
            started = await service.start(chat)
            headers = started.headers | {"cache-control": "no-cache", "x-accel-buffering": "no"}
            return StreamingResponse(events(started, req), media_type="text/event-stream",
                                     headers=headers)  # fmt: skip
        answer, parts = await service.gather(chat)
        last = parts.last
        output = []
        if parts.text or not parts.tool_calls:
            output.append(message_item(f"msg_{uuid.uuid4().hex[:24]}", parts.text, "completed",
                                        parts.logprobs))  # fmt: skip
        output += [call_item(call, "completed") for call in parts.tool_calls]
        status = "incomplete" if last.finish_reason == "length" else "completed"
        rid = answer.request_id.replace("chatcmpl-", "resp_")
        body = response_body(rid, req, answered_by(answer.decision, answer.extension),
                         int(time.time()), status, output, last, answer.extension)  # fmt: skip
        headers = routing_headers(answer.request_id, answer.decision, answer.extension)
        return JSONResponse(body, headers=headers)
