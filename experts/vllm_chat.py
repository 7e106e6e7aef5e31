"""OpenAI chat parameters → one hosted vLLM engine, through vLLM's own request types.

`ChatPlan(request, tokenizer, tool_parser, ...)` builds vLLM's `ChatCompletionRequest` from an
`ExpertRequest` (so vLLM validates the parameters and turns them into `SamplingParams`: penalties,
`logit_bias`, `seed`, `stop`, logprobs, and `response_format` as structured output), lets the
tool parser the registry names for the expert adjust it (vLLM's `Parser.adjust_request`: a
named or `required` `tool_choice` becomes a structured-output constraint, so even a tiny model
answers with a well-formed call) and, when the answer is complete, parses the tool calls out of
the text with the same parser (`Parser.parse`). Nothing here re-implements what vLLM does; this
module only carries the request in and the answer out in Quorum's `Delta` shape.

vLLM is imported lazily (inside the functions), like `experts/engine.py`.
"""

from __future__ import annotations

import uuid
from typing import Any

from experts.errors import InvalidRequestError
from experts.stream import ExpertRequest

__all__ = ["ChatPlan", "openai_logprobs"]


def _vllm_request(request: ExpertRequest, max_tokens: int, stop: list[str], stream: bool) -> Any:
    from pydantic import ValidationError
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.exceptions import VLLMValidationError

    body = {"model": "expert", "messages": request.messages, "max_tokens": max_tokens,
            "temperature": request.temperature, "top_p": request.top_p, "stream": stream,
            **request.openai_params(), "stop": stop or None}  # fmt: skip
    try:
        return ChatCompletionRequest.model_validate(body)
    except VLLMValidationError as exc:
        raise InvalidRequestError(str(exc), param=exc.parameter) from None
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"])
        raise InvalidRequestError(f"'{param}': {err['msg']}", param=param.split(".")[0]) from None


class ChatPlan:
    """One request's vLLM side: `sampling` (vLLM's `SamplingParams`) before generating,
    `finish(text, token_ids, finish_reason)` → (content, tool calls, finish reason) after.

    `tool_parser`: the vLLM tool parser name the registry gives the expert (None: the expert
    cannot call tools, and a request that offers tools is refused with a 400 naming `tools`);
    `tool_strict_level`: the expert's floor on how tightly calls are constrained (vLLM's
    `--tool-strict-level`: auto, function, parameter)."""

    def __init__(
        self,
        request: ExpertRequest,
        tokenizer: Any,
        tool_parser: str | None,
        *,
        max_tokens: int,
        stop: list[str],
        output_kind: Any,
        who: str,
        tool_strict_level: str = "auto",
    ) -> None:
        from vllm.sampling_params import RequestOutputKind

        self.request = request
        stream = output_kind == RequestOutputKind.DELTA
        self.vllm_request = _vllm_request(request, max_tokens, stop, stream)
        self.parser = None
        if request.calls_tools:
            if tool_parser is None:
                raise InvalidRequestError(
                    f"{who} has no tool parser (capabilities.tool_parser in the registry), so it "
                    "cannot call tools; send the request to an expert that can, or drop 'tools'",
                    param="tools", code="tools_not_supported",
                )  # fmt: skip
            from vllm.parser import ParserManager

            parser_cls = ParserManager.get_parser(
                tool_parser_name=tool_parser, enable_auto_tools=True, tokenizer=tokenizer,
                tool_strict_level=tool_strict_level,
            )
            self.parser = parser_cls(tokenizer, self.vllm_request.tools)
            self.vllm_request = self.parser.adjust_request(self.vllm_request)
        self.sampling = self.vllm_request.to_sampling_params(max_tokens, {})
        self.sampling.output_kind = output_kind

    @property
    def buffers(self) -> bool:
        """Whether the text must be whole before anything is sent: tool calls are parsed from
        the complete answer, so text that may be a call is held back until the end."""
        return self.parser is not None

    def finish(
        self, text: str, token_ids: list[int], finish_reason: str | None
    ) -> tuple[str, list[dict[str, Any]] | None, str | None]:
        """The answer's content, tool calls (OpenAI's shape) and finish reason, as vLLM's
        OpenAI server reports them: "tool_calls" when an `auto` choice called tools or a
        `required` one finished; a named tool choice keeps "stop"."""
        if self.parser is None:
            return text, None, finish_reason
        _, content, calls = self.parser.parse(
            text, self.vllm_request, enable_auto_tools=True, model_output_token_ids=token_ids
        )
        tool_calls = [
            {"id": call.id or f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": call.name, "arguments": call.arguments}}
            for call in calls or []
        ]  # fmt: skip
        choice = self.request.tool_choice
        if tool_calls and (choice in (None, "auto") or (choice == "required"
                                                        and finish_reason == "stop")):  # fmt: skip
            finish_reason = "tool_calls"
        return content or "", tool_calls or None, finish_reason


def openai_logprobs(
    token_ids: list[int], logprobs: list[dict[int, Any]], top: int
) -> list[dict[str, Any]]:
    """vLLM's per-token logprobs (one `{token_id: Logprob}` per generated token, the sampled one
    and the `top` most likely) as OpenAI's `logprobs.content` entries."""
    entries = []
    for token_id, candidates in zip(token_ids, logprobs, strict=False):
        sampled = candidates[token_id]
        ranked = sorted(candidates.values(), key=lambda lp: (lp.rank is None, lp.rank or 0))
        entries.append({
            **_token(sampled.decoded_token, sampled.logprob),
            "top_logprobs": [_token(lp.decoded_token, lp.logprob) for lp in ranked[:top]],
        })  # fmt: skip
    return entries


def _token(text: str | None, logprob: float) -> dict[str, Any]:
    text = text or ""
    # -inf (a token the constraint forbade) is not JSON; OpenAI reports -9999.0 for such.
    value = max(float(logprob), -9999.0)
    return {"token": text, "logprob": value, "bytes": list(text.encode())}
