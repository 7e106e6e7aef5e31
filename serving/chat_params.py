"""The OpenAI chat-completions parameters beyond messages and sampling: their request models, and
the rule that none is silently ignored.

Every parameter of OpenAI's chat-completions API is either honoured (validated here, carried to
the expert in `ExpertRequest`, enforced by vLLM for hosted experts and passed verbatim to
`openai`-backend experts) or refused with a 400 that names it and says what to send instead
(`REFUSED`). A field OpenAI does not define is refused too, as OpenAI does ("unrecognized request
argument"), so a typo never passes unnoticed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["REFUSED", "AllowedToolsChoice", "FunctionDef", "JSONSchemaFormat", "NamedToolChoice", "ResponseFormat",
           "Tool", "ToolCall", "ToolChoice", "check_logit_bias", "is_noop", "refused_fields"]  # fmt: skip


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """`{"type": "text" | "json_object"}` or `{"type": "json_schema", "json_schema": {...}}`."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError(
                'type "json_schema" needs "json_schema": {"name": ..., "schema": {...}}'
            )
        return self

    @property
    def structured(self) -> bool:
        return self.type != "text"


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionDef


class _Named(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: _Named


class AllowedTools(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["auto", "required"]
    tools: list[NamedToolChoice] = Field(min_length=1)


class AllowedToolsChoice(BaseModel):
    """`{"type": "allowed_tools", "allowed_tools": {"mode", "tools"}}`: the model may call only
    these of `tools` (the expert is sent only them, with `mode` as its tool_choice)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["allowed_tools"]
    allowed_tools: AllowedTools

    @property
    def names(self) -> list[str]:
        return [t.function.name for t in self.allowed_tools.tools]


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice | AllowedToolsChoice


class ToolCallFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    arguments: str


class ToolCall(BaseModel):
    """A call in an assistant message the client sends back (a conversation with tools)."""

    model_config = ConfigDict(extra="forbid")
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


def check_logit_bias(bias: dict[str, float] | None) -> dict[str, float] | None:
    for key, value in (bias or {}).items():
        if not key.lstrip("-").isdigit():
            raise ValueError(f"key {key!r} is not a token id; keys are token ids as strings")
        if not -100 <= value <= 100:
            raise ValueError(f"bias {value} for token {key} is outside [-100, 100]")
    return bias


#: OpenAI chat parameters Quorum does not honour, each with its no-op value (a frozenset: any of
#: them) and why and what to send instead. A request that sets one to anything else gets a 400
#: naming it.
REFUSED: dict[str, tuple[Any, str]] = {
    "functions": (None, "the deprecated 'functions' API is not served; send 'tools'"),
    "function_call": (None, "the deprecated 'function_call' is not served; send 'tool_choice'"),
    "audio": (None, "audio output is not served; drop 'audio'"),
    "modalities": (["text"], "only text output is served; drop 'modalities' or send ['text']"),
    "prediction": (None, "predicted outputs are not served; drop 'prediction'"),
    "store": (False, "completions are not stored; drop 'store' or send false"),
    "metadata": (None, "completions are not stored, so 'metadata' has no use; drop it"),
    "web_search_options": (None, "web search is not served; drop 'web_search_options'"),
    "reasoning_effort": (None, "the experts are not reasoning models; drop 'reasoning_effort'"),
    "verbosity": (None, "'verbosity' is not served; drop it"),
    "service_tier": (frozenset({"auto", "default"}), "there is one service tier; drop "
                     "'service_tier' or send 'auto'"),
    "prompt_cache_key": (None, "'prompt_cache_key' is not served; drop it"),
    "safety_identifier": (None, "'safety_identifier' is not served; send 'user' instead"),
}


def is_noop(value: Any, noop: Any) -> bool:
    """Whether a refused parameter's `value` asks for nothing: null or its no-op value (any of
    them, when `noop` is a frozenset)."""
    return value is None or any(value == v for v in (noop if isinstance(noop, frozenset)
                                                     else [noop]))  # fmt: skip


def refused_fields(data: dict[str, Any], known: set[str]) -> tuple[str, str] | None:
    """The first field of `data` that Quorum refuses: (name, message), else None."""
    for name, value in data.items():
        if name in known:
            continue
        if name in REFUSED:
            noop, why = REFUSED[name]
            if is_noop(value, noop):
                continue
            return name, f"'{name}' is not supported: {why}"
        return name, (f"unrecognized request argument '{name}'; see the README's parameter "
                      "table for what Quorum accepts")  # fmt: skip
    return None
