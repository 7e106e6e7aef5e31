"""`POST /v1/responses`: OpenAI's Responses API, the stateless subset, through the chat pipeline.

Served: `input` as text or a list of items (messages with text content, `function_call` and
`function_call_output` items), `instructions` (the first system message), `max_output_tokens`,
`temperature`, `top_p`, function `tools`, `tool_choice`, `parallel_tool_calls`,
`text.format` (text, json_object, json_schema: structured output), `user`, token logprobs
(`include: ["message.output_text.logprobs"]` and/or `top_logprobs`), and `stream` with the
events OpenAI sends (`response.created`, `response.in_progress`, `response.output_item.added`,
`response.content_part.added`, `response.output_text.delta` / `.done`,
`response.function_call_arguments.delta` / `.done`, `response.content_part.done`,
`response.output_item.done`, `response.completed` or `response.incomplete`); delta events carry
OpenAI's random `obfuscation` padding unless `stream_options.include_obfuscation` is false.
`max_tool_calls` is accepted and echoed: it bounds calls to built-in tools, and none is served.
Nothing is stored: `store: true`, `previous_response_id`, `background`, other `include` values,
`reasoning`, `prompt_cache_key` / `_retention`, `safety_identifier` and built-in tools are
refused with a 400 naming them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from experts.errors import InvalidRequestError, QuorumError
from experts.registry import RouterConfig
from serving.compat import Surface, in_their_words, refuse, validate
from serving.contract import chat_schema, noop_only, request_body
from serving.pipeline import Pipeline, Started, answered_by, routing_headers
from serving.protocol import internal_error
from serving.sse import named_sse, obfuscation

__all__ = ["ResponsesRequest", "chat_messages", "install"]

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


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    name: str


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: TextFormat | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_obfuscation: bool = True  # OpenAI's default


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1)
    input: str | Annotated[list[dict[str, Any]], Field(min_length=1)]
    instructions: str | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    text: TextConfig | None = None
    user: str | None = None
    # the one value served: each output_text part carries its tokens' logprobs
    include: list[Literal["message.output_text.logprobs"]] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    # calls to built-in tools: none is served, so the bound always holds
    max_tool_calls: Annotated[int, Field(ge=1)] | None = None
    # refused unless no-op (REFUSED)
    store: bool | None = None
    previous_response_id: str | None = None
    background: bool | None = None
    reasoning: dict[str, Any] | None = None
    truncation: str | None = None
    conversation: Any = None
    prompt: Any = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    safety_identifier: str | None = None

    @property
    def obfuscates(self) -> bool:
        """Whether stream deltas carry an `obfuscation` field (OpenAI's default)."""
        return self.stream_options is None or self.stream_options.include_obfuscation

    @property
    def logprobs(self) -> bool:
        """Whether output text carries logprobs: asked by `include` or by `top_logprobs`."""
        return bool(self.include) or self.top_logprobs is not None

    def chat(self) -> dict[str, Any]:
        """The same request as a chat request's body."""
        body: dict[str, Any] = {"model": self.model, "messages": chat_messages(self)}
        if self.logprobs:
            body |= {"logprobs": True, "top_logprobs": self.top_logprobs or 0}
        for ours, theirs in (("max_output_tokens", "max_tokens"), ("temperature", "temperature"),
                             ("top_p", "top_p"), ("parallel_tool_calls", "parallel_tool_calls"),
                             ("user", "user")):  # fmt: skip
            if getattr(self, ours) is not None:
                body[theirs] = getattr(self, ours)
        if self.tools:
            body["tools"] = [{"type": "function", "function": t.model_dump(exclude={"type"},
                                                                          exclude_none=True)}
                             for t in self.tools]  # fmt: skip
        if isinstance(self.tool_choice, NamedFunction):
            body["tool_choice"] = {"type": "function", "function": {"name": self.tool_choice.name}}
        elif self.tool_choice is not None:
            body["tool_choice"] = self.tool_choice
        fmt = self.text.format if self.text else None
        if fmt is not None and fmt.type == "json_schema":
            schema = {"name": fmt.name or "response", "schema": fmt.schema_ or {},
                      "strict": fmt.strict, "description": fmt.description}  # fmt: skip
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {k: v for k, v in schema.items()
                                                       if v is not None}}  # fmt: skip
        elif fmt is not None:
            body["response_format"] = {"type": fmt.type}
        return body


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in ("input_text", "output_text", "text"):
                raise InvalidRequestError(f"'{where}.content[{j}]' has type {kind!r}; only text "
                                          "parts are served", param="input")  # fmt: skip
            text = part.get("text") or ""
            if not isinstance(text, str):
                raise InvalidRequestError(f"'{where}.content[{j}].text' must be a string",
                                          param="input")  # fmt: skip
            parts.append(text)
        return "".join(parts)
    raise InvalidRequestError(f"'{where}.content' must be text or a list of text parts",
                              param="input")  # fmt: skip


def chat_messages(request: ResponsesRequest) -> list[dict[str, Any]]:
    """`instructions` and `input` as chat messages (consecutive function calls: one assistant
    message with several tool calls)."""
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    if isinstance(request.input, str):
        return [*messages, {"role": "user", "content": request.input}]
    for i, item in enumerate(request.input):
        kind = item.get("type", "message")
        if kind == "message":
            messages.append({"role": item.get("role"), "content": _text(item.get("content"),
                                                                         f"input[{i}]")})  # fmt: skip
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments")}}  # fmt: skip
            last = messages[-1] if messages else None
            if last and last["role"] == "assistant" and last.get("tool_calls"):
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"),
                             "content": _text(item.get("output"), f"input[{i}]")})  # fmt: skip
        else:
            raise InvalidRequestError(f"'input[{i}]' has type {kind!r}; served are message, "
                                      "function_call and function_call_output", param="input")  # fmt: skip
    return messages


def _message_item(item_id: str, text: str, status: str,
                  logprobs: list | None = None) -> dict[str, Any]:  # fmt: skip
    content = [] if status == "in_progress" else [
        {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}]  # fmt: skip
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": content}  # fmt: skip


def _call_item(call: dict[str, Any], status: str) -> dict[str, Any]:
    return {"type": "function_call", "id": f"fc_{uuid.uuid4().hex[:24]}", "call_id": call["id"],
            "name": call["function"]["name"], "status": status,
            "arguments": call["function"]["arguments"] if status == "completed" else ""}  # fmt: skip


def _response(rid: str, req: ResponsesRequest, model: str, created: int, status: str,
              output: list, last=None, extension=None) -> dict[str, Any]:  # fmt: skip
    body: dict[str, Any] = {
        "id": rid, "object": "response", "created_at": created, "status": status, "model": model,
        "output": output, "instructions": req.instructions, "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "max_output_tokens": req.max_output_tokens, "metadata": {},
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": None, "reasoning": None, "store": False,
        "temperature": req.temperature, "top_p": req.top_p, "truncation": "disabled",
        "top_logprobs": req.top_logprobs, "max_tool_calls": req.max_tool_calls,
        "text": (req.text or TextConfig(format=TextFormat(type="text"))).model_dump(
            by_alias=True, exclude_none=True),
        "tool_choice": req.tool_choice.model_dump() if isinstance(req.tool_choice, NamedFunction)
        else (req.tool_choice or "auto"),
        "tools": [t.model_dump(exclude_none=True) for t in req.tools or []],
        "user": req.user, "usage": None,
    }  # fmt: skip
    if last is not None:
        body["usage"] = {"input_tokens": last.prompt_tokens, "output_tokens": last.completion_tokens,
                         "total_tokens": last.prompt_tokens + last.completion_tokens,
                         "input_tokens_details": {"cached_tokens": 0},
                         "output_tokens_details": {"reasoning_tokens": 0}}  # fmt: skip
    if extension is not None:
        body["quorum"] = extension
    return body


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
            return StreamingResponse(_events(started, req), media_type="text/event-stream",
                                     headers=headers)  # fmt: skip
        answer, parts = await service.gather(chat)
        last = parts.last
        output = []
        if parts.text or not parts.tool_calls:
            output.append(_message_item(f"msg_{uuid.uuid4().hex[:24]}", parts.text, "completed",
                                        parts.logprobs))  # fmt: skip
        output += [_call_item(call, "completed") for call in parts.tool_calls]
        status = "incomplete" if last.finish_reason == "length" else "completed"
        rid = answer.request_id.replace("chatcmpl-", "resp_")
        body = _response(rid, req, answered_by(answer.decision, answer.extension),
                         int(time.time()), status, output, last, answer.extension)  # fmt: skip
        headers = routing_headers(answer.request_id, answer.decision, answer.extension)
        return JSONResponse(body, headers=headers)


async def _events(started: Started, req: ResponsesRequest) -> AsyncIterator[bytes]:
    answer = started.answer
    rid, created = answer.request_id.replace("chatcmpl-", "resp_"), int(time.time())
    seq = iter(range(1 << 30))

    def event(kind: str, **fields: Any) -> bytes:
        if "delta" in fields and req.obfuscates:
            fields["obfuscation"] = obfuscation(fields["delta"])
        return named_sse(kind, {"type": kind, "sequence_number": next(seq), **fields})

    shell = _response(rid, req, started.model, created, "in_progress", [], None, answer.extension)
    yield event("response.created", response=shell)
    yield event("response.in_progress", response=shell)
    output: list[dict[str, Any]] = []
    msg_id, texts, calls, logprobs = f"msg_{uuid.uuid4().hex[:24]}", [], [], []
    delta, last = started.first, started.first
    where = {"item_id": msg_id, "output_index": 0, "content_index": 0}
    try:
        while delta is not None:
            last = delta
            if delta.text:
                if not texts:
                    yield event("response.output_item.added", output_index=0,
                                item=_message_item(msg_id, "", "in_progress"))  # fmt: skip
                    yield event("response.content_part.added", **where, part={
                        "type": "output_text", "text": "", "annotations": []})  # fmt: skip
                texts.append(delta.text)
                yield event("response.output_text.delta", **where, delta=delta.text,
                            logprobs=delta.logprobs or [])  # fmt: skip
            calls += delta.tool_calls or []
            logprobs += delta.logprobs or []  # all of them, also a token that decodes to no text
            delta = await anext(started.rest, None)
    except QuorumError as exc:
        body = exc.to_openai()["error"]
        yield event("error", code=body["code"], message=body["message"], param=body["param"])
        return
    except Exception:
        body = internal_error(answer.request_id).to_openai()["error"]
        yield event("error", code=None, message=body["message"], param=None)
        return
    text = "".join(texts)
    if texts:
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}
        yield event("response.output_text.done", **where, text=text, logprobs=logprobs)
        yield event("response.content_part.done", **where, part=part)
        item = _message_item(msg_id, text, "completed", logprobs)
        yield event("response.output_item.done", output_index=0, item=item)
        output.append(item)
    for call in calls:
        index = len(output)
        item = _call_item(call, "completed")
        yield event("response.output_item.added", output_index=index,
                    item=item | {"status": "in_progress", "arguments": ""})  # fmt: skip
        yield event("response.function_call_arguments.delta", item_id=item["id"],
                    output_index=index, delta=item["arguments"])  # fmt: skip
        yield event("response.function_call_arguments.done", item_id=item["id"],
                    output_index=index, arguments=item["arguments"], name=item["name"])  # fmt: skip
        yield event("response.output_item.done", output_index=index, item=item)
        output.append(item)
    status = "incomplete" if last.finish_reason == "length" else "completed"
    final = _response(rid, req, started.model, created, status, output, last, answer.extension)
    yield event(f"response.{status}", response=final)
