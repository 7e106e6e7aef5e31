"""A chat answer as the Responses API's objects: the `response` body (`response_body`), its
output items (`message_item`, `call_item`) and, streamed, the events OpenAI sends (`events`)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel

from experts.errors import QuorumError
from serving.pipeline import Started
from serving.protocol import internal_error
from serving.responses_request import ResponsesRequest, TextConfig, TextFormat
from serving.sse import named_sse, obfuscation

__all__ = ["call_item", "events", "message_item", "response_body"]


def message_item(item_id: str, text: str, status: str,
                  logprobs: list | None = None) -> dict[str, Any]:  # fmt: skip
    content = [] if status == "in_progress" else [
        {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}]  # fmt: skip
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": content}  # fmt: skip


def call_item(call: dict[str, Any], status: str) -> dict[str, Any]:
    return {"type": "function_call", "id": f"fc_{uuid.uuid4().hex[:24]}", "call_id": call["id"],
            "name": call["function"]["name"], "status": status,
            "arguments": call["function"]["arguments"] if status == "completed" else ""}  # fmt: skip


def response_body(rid: str, req: ResponsesRequest, model: str, created: int, status: str,
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
        "tool_choice": req.tool_choice.model_dump() if isinstance(req.tool_choice, BaseModel)
        else (req.tool_choice or "auto"),
        "tools": [t.model_dump(exclude_none=True) for t in req.tools or []],
        "user": req.user, "usage": None,
    }  # fmt: skip
    if last is not None:
        # the experts are not reasoning models; cached tokens only when the expert said
        body["usage"] = {"input_tokens": last.prompt_tokens, "output_tokens": last.completion_tokens,
                         "total_tokens": last.prompt_tokens + last.completion_tokens,
                         "output_tokens_details": {"reasoning_tokens": 0}}  # fmt: skip
        if last.cached_tokens is not None:
            body["usage"]["input_tokens_details"] = {"cached_tokens": last.cached_tokens}
    if extension is not None:
        body["quorum"] = extension
    return body


async def events(started: Started, req: ResponsesRequest) -> AsyncIterator[bytes]:
    answer = started.answer
    rid, created = answer.request_id.replace("chatcmpl-", "resp_"), int(time.time())
    seq = iter(range(1 << 30))

    def event(kind: str, **fields: Any) -> bytes:
        if "delta" in fields and req.obfuscates:
            fields["obfuscation"] = obfuscation(fields["delta"])
        return named_sse(kind, {"type": kind, "sequence_number": next(seq), **fields})

    shell = response_body(rid, req, started.model, created, "in_progress", [], None, answer.extension)
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
                                item=message_item(msg_id, "", "in_progress"))  # fmt: skip
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
        item = message_item(msg_id, text, "completed", logprobs)
        yield event("response.output_item.done", output_index=0, item=item)
        output.append(item)
    for call in calls:
        index = len(output)
        item = call_item(call, "completed")
        yield event("response.output_item.added", output_index=index,
                    item=item | {"status": "in_progress", "arguments": ""})  # fmt: skip
        yield event("response.function_call_arguments.delta", item_id=item["id"],
                    output_index=index, delta=item["arguments"])  # fmt: skip
        yield event("response.function_call_arguments.done", item_id=item["id"],
                    output_index=index, arguments=item["arguments"], name=item["name"])  # fmt: skip
        yield event("response.output_item.done", output_index=index, item=item)
        output.append(item)
    status = "incomplete" if last.finish_reason == "length" else "completed"
    final = response_body(rid, req, started.model, created, status, output, last, answer.extension)
    yield event(f"response.{status}", response=final)
