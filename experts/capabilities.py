"""What an expert can do beyond plain chat: the registry's `experts[].capabilities` section.

Recruitment reads it (`router/eligibility.py`) to consider only experts that can serve a request
(tools, structured output, logprobs), and the hosted engine reads `tool_parser` to parse tool
calls (`experts/vllm_chat.py`). The context length stays `experts[].context_length`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from experts.config import Strict

__all__ = ["Capabilities"]


class Capabilities(Strict):
    tool_parser: str | None = Field(
        None,
        description="Tool calling. `vllm` backend: the vLLM tool parser that reads this model's "
        "calls (e.g. `hermes`, `llama3_json`, `mistral`; `vllm serve --help` lists them); a named "
        "or `required` tool_choice is enforced with structured output, `auto` relies on the "
        "model. `openai` backend: any non-empty value declares that the remote server accepts "
        "`tools` (it parses the calls itself). None: requests with tools are not sent here.",
    )
    tool_strict_level: Literal["auto", "function", "parameter"] = Field(
        "auto",
        description="`vllm` backend: how tightly tool calls are constrained (vLLM's "
        "`--tool-strict-level`). `auto`: a named or `required` tool_choice constrains the call's "
        "envelope, and a tool's arguments follow its schema when the tool says `strict: true` "
        "(OpenAI's meaning). `function`: the envelope is constrained for every request with "
        "tools. `parameter`: also every tool's arguments, as if each tool said `strict: true`; "
        "for small models that do not follow a schema unaided (the built-in ones use it).",
    )
    structured_output: bool = Field(
        True,
        description="Honours `response_format` (json_object, json_schema); vLLM enforces it with "
        "its structured-output backend. Set false for a remote server that does not.",
    )
    top_k: bool = Field(
        True,
        description="Honours `top_k` (vLLM does, hosted or as a server). Set false for a remote "
        "API that refuses it (OpenAI's): requests with top_k > 0 are then not sent here.",
    )
    prefill: bool = Field(
        True,
        description="Continues a final assistant message (Anthropic's prefill; vLLM's "
        "`continue_final_message`, which hosted experts and vLLM servers honour). Set false for a "
        "remote API without it (OpenAI's): such requests are then not sent here.",
    )
    logprobs: bool = Field(
        True, description="Returns `logprobs` / `top_logprobs` (vLLM does; some remote APIs not)."
    )
    max_top_logprobs: int = Field(
        20, ge=0, description="The most `top_logprobs` this expert returns (vLLM's default: 20)."
    )
