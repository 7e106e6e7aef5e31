"""`POST /v1/messages`: Anthropic's Messages API, through the chat pipeline; and
`POST /v1/messages/count_tokens`, the prompt's length for the expert that would answer it.

Served: `messages` (text, `tool_use` and `tool_result` blocks; a final assistant message is a
prefill that the answer continues), `system`, `max_tokens`, `temperature`, `top_p`, `top_k`,
`stop_sequences`, `tools` (`input_schema`), `tool_choice` (auto, any, tool, none;
`disable_parallel_tool_use`), `metadata.user_id`, and `stream` with Anthropic's events
(`message_start`, `content_block_start` / `_delta` / `_stop`, `message_delta`, `message_stop`).
Refused with a 400 naming them: `thinking`, image and document blocks. Errors come in
Anthropic's shape (`{"type": "error", "error": {"type", "message"}}`), with the same status.

`stop_reason` is `end_turn`, `max_tokens`, `tool_use`, or `stop_sequence` with the matched string
in `stop_sequence` (hosted experts and vLLM servers say which matched; an OpenAI server does
not, so there a stop sequence reads as `end_turn`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from experts.errors import InvalidRequestError, QuorumError
from experts.registry import RouterConfig
from serving.compat import Surface, in_their_words, refuse, validate
from serving.contract import anthropic_error, noop_only, request_body
from serving.pipeline import Pipeline, Started, answered_by, routing_headers
from serving.protocol import internal_error
from serving.sse import named_sse

__all__ = ["CountTokensRequest", "MessagesRequest", "install"]

#: chat parameter -> this API's name for it, in error messages
NAMES = {"stop": "stop_sequences", "continue_final_message": "messages"}

REFUSED = {
    "thinking": (None, "the experts are not reasoning models; drop 'thinking'"),
    "service_tier": (frozenset({"auto", "standard_only"}), "there is one service tier, the "
                     "standard one; drop 'service_tier' or send 'auto' or 'standard_only'"),
    "container": (None, "code execution containers are not served"),
    "mcp_servers": (None, "MCP servers are not served"),
}

COUNT_REFUSED = {name: REFUSED[name] for name in ("thinking", "mcp_servers")}

_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "abort": "end_turn"}


def _stop_reason(last: Any, calls: list | None) -> str:
    if calls:
        return "tool_use"
    if last.stop is not None:
        return "stop_sequence"
    return _STOP.get(last.finish_reason or "stop", "end_turn")


class AnthropicTool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None
    cache_control: dict[str, Any] | None = None


class ToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class MessagesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1)
    messages: Annotated[list[dict[str, Any]], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)]
    system: str | list[dict[str, Any]] | None = None
    temperature: Annotated[float, Field(ge=0, le=1)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    tools: list[AnthropicTool] | None = None
    tool_choice: ToolChoice | None = None
    metadata: dict[str, Any] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None  # 0: no limit
    thinking: dict[str, Any] | None = None
    service_tier: str | None = None
    container: Any = None
    mcp_servers: Any = None

    def chat(self) -> dict[str, Any]:
        """The same request as a chat request's body."""
        messages = self._messages()
        body: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens,
                                "messages": messages, "stream": self.stream}  # fmt: skip
        if _prefill(messages):
            body["continue_final_message"] = True
        for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"),
                             ("top_k", "top_k"), ("stop_sequences", "stop")):  # fmt: skip
            if getattr(self, ours) is not None:
                body[theirs] = getattr(self, ours)
        if (self.metadata or {}).get("user_id"):
            body["user"] = self.metadata["user_id"]
        if self.tools:
            body["tools"] = [{"type": "function", "function": {
                "name": t.name, "parameters": t.input_schema,
                **({"description": t.description} if t.description else {})}}
                for t in self.tools]  # fmt: skip
        choice = self.tool_choice
        if choice is not None:
            body["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}.get(
                choice.type) or {"type": "function", "function": {"name": choice.name}}  # fmt: skip
            if choice.disable_parallel_tool_use is not None:
                body["parallel_tool_calls"] = not choice.disable_parallel_tool_use
        return body

    def _messages(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self.system:
            out.append({"role": "system", "content": _text(self.system, "system")})
        for i, message in enumerate(self.messages):
            role, content = message.get("role"), message.get("content")
            if role not in ("user", "assistant"):
                raise InvalidRequestError(f"'messages[{i}].role' must be user or assistant, "
                                          f"got {role!r}", param="messages")  # fmt: skip
            if isinstance(content, str):
                out.append({"role": role, "content": content})
                continue
            texts, calls = [], []
            if not isinstance(content, list):
                raise InvalidRequestError(f"'messages[{i}].content' must be text or a list of "
                                          "content blocks", param="messages")  # fmt: skip
            for j, block in enumerate(content):
                where = f"messages[{i}].content[{j}]"
                kind = block.get("type") if isinstance(block, dict) else None
                if kind == "text":
                    texts.append(_block_text(block, where))
                elif kind == "tool_use" and role == "assistant":
                    if not (
                        isinstance(block.get("id"), str) and isinstance(block.get("name"), str)
                    ):
                        raise InvalidRequestError(f"'{where}' (tool_use) needs string 'id' and "
                                                  "'name'", param="messages")  # fmt: skip
                    calls.append({"id": block["id"], "type": "function", "function": {
                        "name": block["name"], "arguments": json.dumps(block.get("input", {}))}})  # fmt: skip
                elif kind == "tool_result" and role == "user":
                    out.append({"role": "tool", "tool_call_id": block.get("tool_use_id"),
                                "content": _text(block.get("content", ""),
                                                 f"messages[{i}].content[{j}]")})  # fmt: skip
                else:
                    raise InvalidRequestError(f"'messages[{i}].content[{j}]' is a {kind!r} "
                                              "block; served are text, tool_use (assistant) and "
                                              "tool_result (user)", param="messages")  # fmt: skip
            if calls:
                out.append({"role": "assistant", "content": "".join(texts) or None,
                            "tool_calls": calls})  # fmt: skip
            elif texts:
                out.append({"role": role, "content": "".join(texts)})
        return out


class CountTokensRequest(BaseModel):
    """A count_tokens body: what a Messages request says about the prompt, nothing about sampling."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1)
    messages: Annotated[list[dict[str, Any]], Field(min_length=1)]
    system: str | list[dict[str, Any]] | None = None
    tools: list[AnthropicTool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: dict[str, Any] | None = None
    mcp_servers: Any = None

    def chat(self) -> dict[str, Any]:
        """The chat request whose prompt is counted (max_tokens does not change the count)."""
        return MessagesRequest(max_tokens=1, **self.model_dump(exclude_none=True)).chat()


def _prefill(messages: list[dict[str, Any]]) -> bool:
    """Whether the answer continues the last message: Anthropic's prefill, a final assistant turn
    of text (an empty one asks nothing and is dropped, unless it is the only message)."""
    last = messages[-1] if messages else {}
    if last.get("role") != "assistant" or last.get("tool_calls"):
        return False
    if not last["content"]:
        if len(messages) > 1:
            messages.pop()
        return False
    if last["content"] != last["content"].rstrip():
        raise InvalidRequestError("final assistant content cannot end with trailing whitespace",
                                  param="messages")  # fmt: skip
    return True


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for block in content if isinstance(content, list) else [None]:
        if not isinstance(block, dict) or block.get("type") != "text":
            raise InvalidRequestError(f"'{where}' may hold only text blocks", param=where)
        texts.append(_block_text(block, where))
    return "".join(texts)


def _block_text(block: dict[str, Any], where: str) -> str:
    text = block.get("text", "")
    if not isinstance(text, str):
        raise InvalidRequestError(f"'{where}.text' must be a string", param=where)
    return text


_error = anthropic_error  # Anthropic's error shape (serving.contract)


def _blocks(text: str, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if text or not calls else []
    for call in calls:
        blocks.append({"type": "tool_use", "id": call["id"], "name": call["function"]["name"],
                       "input": _arguments(call["function"]["arguments"])})  # fmt: skip
    return blocks


def _arguments(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return {"_raw": arguments}  # the model wrote something that is not JSON: keep it whole


def published(
    limits: RouterConfig, model: type[BaseModel] = MessagesRequest
) -> dict[str, Any]:
    """`openapi_extra` for a body of `model` (a Messages or count_tokens request): the content
    blocks and limits the translation enforces."""
    text = {"type": "string", "maxLength": limits.max_message_chars}
    text_block = {"type": "object", "required": ["type"], "properties": {
        "type": {"const": "text"}, "text": text}}  # fmt: skip
    texts = {"anyOf": [text, {"type": "array", "items": text_block}]}
    tool_use = {"type": "object", "required": ["type", "id", "name"], "properties": {
        "type": {"const": "tool_use"}, "id": {"type": "string"}, "name": {"type": "string"},
        "input": {"type": "object"}}}  # fmt: skip
    tool_result = {"type": "object", "required": ["type", "tool_use_id"], "properties": {
        "type": {"const": "tool_result"}, "tool_use_id": {"type": "string", "minLength": 1},
        "content": texts}}  # fmt: skip

    def message(role: str, block: dict) -> dict:
        blocks = {"type": "array", "minItems": 1, "items": {"anyOf": [text_block, block]}}
        return {"type": "object", "required": ["role", "content"], "properties": {
            "role": {"const": role}, "content": {"anyOf": [text, blocks]}}}  # fmt: skip

    overrides = noop_only(REFUSED) | {
        "messages": {"type": "array", "minItems": 1, "maxItems": limits.max_messages - 1,
                     "items": {"anyOf": [message("user", tool_result),
                                         message("assistant", tool_use)]}},
        "system": {"anyOf": [texts["anyOf"][0], texts["anyOf"][1], {"type": "null"}]},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": limits.max_tokens_cap},
        "stop_sequences": {"anyOf": [
            {"type": "array", "items": {"type": "string"}, "maxItems": 4}, {"type": "null"}]},
        "metadata": {"anyOf": [{"type": "object", "properties": {
            "user_id": {"type": ["string", "null"]}}}, {"type": "null"}]},
    }  # fmt: skip
    extra = request_body(model, {k: v for k, v in overrides.items() if k in model.model_fields})
    schema = extra["requestBody"]["content"]["application/json"]["schema"]
    tool = schema["properties"]["tools"]["anyOf"][0]["items"]["properties"]
    tool["name"] = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}
    schema["allOf"] = [
        {"if": {"required": ["tool_choice"], "properties": {"tool_choice": {
            "type": "object", "properties": {"type": {"not": {"const": "none"}}}}}},
         "then": {"required": ["tools"], "properties": {"tools": {"type": "array",
                                                                   "minItems": 1}}}},
        {"if": {"required": ["tool_choice"], "properties": {"tool_choice": {
            "type": "object", "properties": {"type": {"const": "tool"}}}}},
         "then": {"properties": {"tool_choice": {"required": ["name"],
                                                 "properties": {"name": {"type": "string"}}}}}},
    ]  # fmt: skip
    return extra


def install(api: FastAPI, service: Pipeline, surface: Surface) -> None:
    @api.post("/v1/messages", openapi_extra=published(service.registry.router))
    async def messages(request: Request) -> Response:
        try:
            data = await surface.body(request)
            refuse(data, REFUSED)
            req = validate(MessagesRequest, data)
            chat = in_their_words(surface.chat, req.chat(), NAMES)
            if req.stream:
                started = await service.start(chat)
                headers = started.headers | {"cache-control": "no-cache"}
                return StreamingResponse(_events(started), media_type="text/event-stream",
                                         headers=headers)  # fmt: skip
            answer, parts = await service.gather(chat)
        except QuorumError as exc:
            service.observer.rejected(exc)
            return _error(exc)
        last = parts.last
        body = {
            "id": answer.request_id.replace("chatcmpl-", "msg_"), "type": "message",
            "role": "assistant", "model": answered_by(answer.decision, answer.extension),
            "content": _blocks(parts.text, parts.tool_calls),
            "stop_reason": _stop_reason(last, parts.tool_calls), "stop_sequence": last.stop,
            "usage": {"input_tokens": last.prompt_tokens, "output_tokens": last.completion_tokens},
            "quorum": answer.extension,
        }  # fmt: skip
        headers = routing_headers(answer.request_id, answer.decision, answer.extension)
        return JSONResponse(body, headers=headers)

    @api.post("/v1/messages/count_tokens",
              openapi_extra=published(service.registry.router, CountTokensRequest))
    async def count_tokens(request: Request) -> Response:
        """The prompt's length in the tokens of the expert that would answer it (routed, not
        generated); `quorum` adds who that is and the count for each expert recruited."""
        try:
            data = await surface.body(request)
            refuse(data, COUNT_REFUSED)
            chat = in_their_words(surface.chat, validate(CountTokensRequest, data).chat(), NAMES)
            decision, counts = await service.prompt_tokens(chat)
            expert = decision.experts[0]
            if expert not in counts:
                raise InvalidRequestError(
                    f"the prompt cannot be counted in expert '{expert}''s tokens: its tokenizer "
                    "is not known here (a `backend: openai` expert) or did not load (see the "
                    "server log); name a hosted expert as the model",
                    param="model", code="tokens_not_countable")  # fmt: skip
        except QuorumError as exc:
            return _error(exc)
        recruited = {name: counts[name] for name in decision.experts if name in counts}
        return JSONResponse({"input_tokens": counts[expert],
                             "quorum": {"expert": expert, "input_tokens_by_expert": recruited}})


async def _events(started: Started) -> AsyncIterator[bytes]:
    answer = started.answer
    message = {
        "id": answer.request_id.replace("chatcmpl-", "msg_"), "type": "message",
        "role": "assistant", "model": started.model, "content": [], "stop_reason": None,
        "stop_sequence": None, "usage": {"input_tokens": started.first.prompt_tokens,
                                         "output_tokens": 0},
        "quorum": answer.extension,
    }  # fmt: skip
    yield named_sse("message_start", {"type": "message_start", "message": message})
    index, text_open, calls = 0, False, []
    delta, last = started.first, started.first
    try:
        while delta is not None:
            last = delta
            if delta.text:
                if not text_open:
                    yield named_sse("content_block_start", {"type": "content_block_start",
                                    "index": 0, "content_block": {"type": "text", "text": ""}})  # fmt: skip
                    text_open = True
                yield named_sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                "delta": {"type": "text_delta", "text": delta.text}})  # fmt: skip
            calls += delta.tool_calls or []
            delta = await anext(started.rest, None)
    except QuorumError as exc:
        kind = "overloaded_error" if exc.status == 503 else "api_error"
        yield named_sse("error", {"type": "error", "error": {"type": kind, "message": exc.message}})
        return
    except Exception:
        message = internal_error(answer.request_id).message
        yield named_sse("error", {"type": "error", "error": {"type": "api_error",
                                                             "message": message}})  # fmt: skip
        return
    if text_open:
        yield named_sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        index = 1
    for call in calls:
        block = {"type": "tool_use", "id": call["id"], "name": call["function"]["name"],
                 "input": {}}  # fmt: skip
        yield named_sse("content_block_start", {"type": "content_block_start", "index": index,
                                                "content_block": block})  # fmt: skip
        yield named_sse("content_block_delta", {"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta",
                                  "partial_json": call["function"]["arguments"]}})  # fmt: skip
        yield named_sse("content_block_stop", {"type": "content_block_stop", "index": index})
        index += 1
    yield named_sse("message_delta", {"type": "message_delta",
                    "delta": {"stop_reason": _stop_reason(last, calls), "stop_sequence": last.stop},
                    "usage": {"output_tokens": last.completion_tokens}})  # fmt: skip
    yield named_sse("message_stop", {"type": "message_stop"})
