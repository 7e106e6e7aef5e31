"""The Responses API's request (`ResponsesRequest`) and its translation into a chat request's body
(`chat()`, with `chat_messages`): the part of `POST /v1/responses` that reads the body
(`serving/compat_responses.py`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from experts.errors import InvalidRequestError

__all__ = ["AllowedTools", "NamedFunction", "ResponsesRequest", "TextConfig", "TextFormat",
           "chat_messages"]  # fmt: skip


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


class AllowedTools(BaseModel):
    """The tools the model may call, of `tools`, and whether it must (`mode`)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["allowed_tools"]
    mode: Literal["auto", "required"]
    tools: Annotated[list[NamedFunction], Field(min_length=1)]


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
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | AllowedTools | None = None
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
    # refused unless no-op (compat_responses.REFUSED)
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
        elif isinstance(self.tool_choice, AllowedTools):
            body["tool_choice"] = {"type": "allowed_tools", "allowed_tools": {
                "mode": self.tool_choice.mode, "tools": [
                    {"type": "function", "function": {"name": t.name}}
                    for t in self.tool_choice.tools]}}  # fmt: skip
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
