"""Which experts can serve a request at all, before anyone ranks them.

A request may need tool calling, structured output (`response_format`), logprobs, `top_k`, the
continuation of an assistant message (prefill), or room for a long prompt. `Needs` says what one
request needs; `exclusions(registry, needs, experts)` names each expert of `experts` that cannot
serve it and why (from the registry's `experts[].capabilities` and `context_length`, the prompt
counted in that expert's own tokens). Recruitment then ranks only the others
(`Recruiter.recruit(..., exclude=...)`), and the routing decision lists the excluded experts with
their reasons (`recruitment.excluded`). When no expert is left, `no_expert_error` is the 400
that says what to change.

Aggregation (k > 1 experts): a JSON format works (every expert and the aggregator get the same
`response_format`, and vote/confidence return one expert's conforming answer); tool calls,
logprobs and a prefill's continuation belong to one expert's answer and are refused with k > 1
(`aggregation_error`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from experts.errors import InvalidRequestError
from experts.registry import Registry

__all__ = ["Exclusion", "Needs", "aggregation_error", "exclusions", "no_expert_error"]


@dataclass(frozen=True)
class Needs:
    """What a request needs from its expert."""

    tools: bool = False  # tools offered and tool_choice is not "none"
    structured_output: bool = False  # response_format json_object / json_schema
    logprobs: bool = False
    top_logprobs: int = 0
    top_k: bool = False  # top_k > 0
    prefill: bool = False  # the answer continues the last (assistant) message
    prompt_tokens: dict[str, int] = field(default_factory=dict)  # per expert, in its tokens


@dataclass(frozen=True)
class Exclusion:
    """Why one expert cannot serve the request: the parameter at stake and the reason."""

    param: str
    reason: str
    fix: str


def _why_not(registry: Registry, name: str, needs: Needs) -> Exclusion | None:
    expert = registry.expert(name)
    caps = expert.capabilities
    if needs.tools and not caps.tool_parser:
        return Exclusion("tools", "cannot call tools (no capabilities.tool_parser)",
                         "drop 'tools' or set tool_choice 'none'")  # fmt: skip
    if needs.structured_output and not caps.structured_output:
        return Exclusion("response_format", "has no structured output",
                         "drop 'response_format' or send type 'text'")  # fmt: skip
    if needs.top_k and not caps.top_k:
        return Exclusion("top_k", "does not honour top_k", "drop 'top_k'")
    if needs.prefill and not caps.prefill:
        return Exclusion("continue_final_message", "cannot continue an assistant message "
                         "(capabilities.prefill)", "end the messages with a user turn")  # fmt: skip
    if needs.logprobs and not caps.logprobs:
        return Exclusion("logprobs", "returns no logprobs", "drop 'logprobs'")
    if needs.top_logprobs > caps.max_top_logprobs:
        return Exclusion("top_logprobs", f"returns at most {caps.max_top_logprobs} top_logprobs",
                         f"ask for at most {caps.max_top_logprobs}")  # fmt: skip
    tokens = needs.prompt_tokens.get(name)
    if tokens is not None and tokens > expert.context_length - 1:
        return Exclusion("messages", f"the prompt is {tokens} of its tokens; its context holds "
                         f"{expert.context_length} (prompt + answer)",
                         "shorten the messages")  # fmt: skip
    return None


def exclusions(registry: Registry, needs: Needs, experts: Iterable[str]) -> dict[str, Exclusion]:
    """The experts of `experts` that cannot serve a request with `needs`, each with why."""
    out = {}
    for name in experts:
        why = _why_not(registry, name, needs)
        if why is not None:
            out[name] = why
    return out


def no_expert_error(model: str, excluded: dict[str, Exclusion]) -> InvalidRequestError:
    """The 400 for a request that no expert of `model` can serve: each expert's reason and the
    changes that would make one eligible."""
    reasons = "; ".join(f"'{name}' {why.reason}" for name, why in excluded.items())
    fixes = " or ".join(dict.fromkeys(why.fix for why in excluded.values()))
    first = next(iter(excluded.values()))
    return InvalidRequestError(
        f"no expert that model '{model}' may use can serve this request: {reasons}; to be "
        f"served, {fixes}, or use a model whose experts can",
        param=first.param, code="no_eligible_expert",
    )  # fmt: skip


def aggregation_error(needs: Needs, experts: list[str]) -> InvalidRequestError | None:
    """Refusal of a k > 1 answer that cannot be aggregated (tool calls, logprobs), else None."""
    if len(experts) < 2:
        return None
    for param, needed in (("tools", needs.tools), ("logprobs", needs.logprobs),
                          ("continue_final_message", needs.prefill)):  # fmt: skip
        if needed:
            return InvalidRequestError(
                f"'{param}' needs one expert's answer, but this model aggregates "
                f"{len(experts)} experts ({', '.join(experts)}); name one expert as 'model', "
                f"use a virtual model with experts_per_query 1, or drop '{param}'",
                param=param, code="not_aggregatable",
            )  # fmt: skip
    return None
