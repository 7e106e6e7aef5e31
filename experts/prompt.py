"""OpenAI chat messages → the prompt an expert's chat template renders, in its tokens.

`prompt_ids(tokenizer, messages, tools, who)` is the one place a hosted expert's prompt is built:
the engine sends these ids to vLLM, and `experts.tokens` counts them before routing, so the count
is what the answer bills. `template_messages` adapts OpenAI's messages to what Hugging Face chat
templates read:
- `developer` (OpenAI's newer name for the system role) becomes `system`;
- a tool call's `arguments` become a mapping (OpenAI sends a JSON string; templates iterate
  over them);
- an assistant turn that only calls tools has `content` "" rather than null (templates
  concatenate it);
- for a template that does not render `tool_calls` (the built-in tiny models), the calls are
  written into the assistant's text in the `<tool_call>{"name", "arguments"}</tool_call>` form
  the hermes parser reads, so the model still sees what it called before the tool's result.

A template that cannot render the messages (a `raise_exception` for an unsupported role order,
or a type it cannot handle) is the request's problem, not the expert's: a 400 naming the expert.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from experts.errors import InvalidRequestError
from experts.stream import template_ending

__all__ = ["prompt_ids", "template_messages"]

log = logging.getLogger(__name__)


def prompt_ids(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    who: str,
    continue_final: bool = False,
) -> list[int]:
    """The token ids of `messages` (and `tools`) under `tokenizer`'s chat template, with the
    generation prompt, or with `continue_final` ending inside the last (assistant) message, so the
    answer continues its text (Anthropic's prefill); `who` names the expert in the 400 when the
    template refuses them."""
    template = getattr(tokenizer, "chat_template", None) or ""
    adapted = template_messages(messages, calls_as_text="tool_calls" not in template)
    try:
        text = tokenizer.apply_chat_template(adapted, tools=tools, tokenize=False,
                                             **template_ending(continue_final))  # fmt: skip
    except Exception as exc:  # jinja2's TemplateError from raise_exception, a render error, or
        # (continue_final) a template that does not write the last message's text as sent
        log.warning("%s: chat template refused a request's messages: %s: %s",
                    who, type(exc).__name__, exc)  # fmt: skip
        raise InvalidRequestError(
            f"{who}'s chat template cannot render these messages ({exc}); change the "
            "conversation (e.g. the order of roles) or send it to another expert",
            param="messages", code="template_error",
        ) from None  # fmt: skip
    # The chat template writes its own special tokens (BOS, role markers).
    return list(tokenizer.encode(text, add_special_tokens=False))


def template_messages(
    messages: list[dict[str, Any]], calls_as_text: bool = False
) -> list[dict[str, Any]]:
    """Messages as Hugging Face chat templates read them (see the module docstring); the
    caller's messages are not changed."""
    out = []
    for message in messages:
        if message.get("role") == "developer":
            message = {**message, "role": "system"}
        calls = message.get("tool_calls")
        if calls:
            calls = [_with_mapping_arguments(call) for call in calls]
            message = {**message, "content": message.get("content") or ""}
            if calls_as_text:
                message["content"] += "".join(_call_text(call) for call in calls)
                del message["tool_calls"]
            else:
                message["tool_calls"] = calls
        out.append(message)
    return out


def _with_mapping_arguments(call: dict[str, Any]) -> dict[str, Any]:
    function = dict(call.get("function") or {})
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            function["arguments"] = json.loads(arguments)
        except json.JSONDecodeError:
            pass  # not JSON: the template gets the string the client sent
    return {**call, "function": function}


def _call_text(call: dict[str, Any]) -> str:
    function = call.get("function") or {}
    body = {"name": function.get("name"), "arguments": function.get("arguments")}
    return f"<tool_call>\n{json.dumps(body)}\n</tool_call>"
