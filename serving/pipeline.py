"""The pipeline, written once: one chat request through the stages, in order.

    route (classify → recruit, router/) → dispatch (one expert, with faults: dispatch.py)
                                        | aggregate (k > 1 experts: aggregate.py) → respond

`Pipeline.answer` is that sentence as code; `complete` and `stream` respond with OpenAI's body or
its SSE chunks. Every backend comes in through the constructor (the route function, one
`ExpertClient` per expert, an observer for metrics and the audit), so the pipeline runs and is
tested without Ray or HTTP; `serving/deployments.py` wires the production ones and
`serving/ingress.py` puts HTTP in front.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from experts.clients import ExpertClient
from experts.errors import ExpertError, QuorumError, RoutingTimeoutError
from experts.registry import Registry
from experts.stream import Delta, ExpertRequest
from experts.tokens import TokenCounter
from router import RoutingDecision
from router.eligibility import Needs, aggregation_error, exclusions, no_expert_error
from serving import protocol
from serving.aggregate import AggregatedAnswer
from serving.auth import record_tokens
from serving.chat_stream import AnswerParts, ChoiceStream, sse_events
from serving.dispatch import FallbackStream, FaultPolicy, fallback_order, metric_fallback
from serving.observe import Observer
from serving.readiness import Readiness

__all__ = ["Answer", "Pipeline", "RouteFn", "Started", "answered_by", "routing_headers"]

T = TypeVar("T")

RouteFn = Callable[..., Awaitable[RoutingDecision]]
"""`route(text, model)`, or `route(text, model, exclude)` with the experts that cannot serve the
request (`router.RouteBatcher.route` is one)."""


@dataclass
class Answer:
    """An answer on its way: the deltas, and the `quorum` extension that travels with it (routing
    decision, fallbacks and aggregation record, filled in as they happen)."""

    request_id: str
    decision: RoutingDecision
    deltas: AsyncIterator[Delta]
    extension: dict


@dataclass
class Started:
    """A streamed answer whose first delta has arrived: what every streaming endpoint (chat,
    completions, responses, messages) turns into its own events."""

    answer: Answer
    model: str  # who answers (the expert, or the aggregator)
    first: Delta
    rest: AsyncIterator[Delta]
    headers: dict[str, str]


class Pipeline:
    """One request through route → dispatch | aggregate → respond, backends injected."""

    def __init__(
        self,
        registry: Registry,
        route: RouteFn,
        clients: dict[str, ExpertClient],
        observer: Observer | None = None,
        faults: FaultPolicy | None = None,
        counter: TokenCounter | None = None,
        readiness: Readiness | None = None,
    ) -> None:
        self.registry = registry
        self.counter = counter  # prompt length per expert, for eligibility (None: not counted)
        self.readiness = readiness  # per-expert loading state (None: always ready)
        self.route_fn = route
        self.clients = clients
        self.observer = observer or Observer()
        # Retry, fallback to the next-best expert, circuit breakers (serving/dispatch.py).
        self.faults = faults or FaultPolicy(clients, registry, on_fallback=metric_fallback)

    # -- the stages ------------------------------------------------------------------------------

    async def answer(
        self, request: protocol.ChatCompletionRequest, decision: RoutingDecision | None = None
    ) -> Answer:
        """The stages in order. A caller that already routed the request passes `decision`."""
        request_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        started = time.perf_counter()
        needs = await self.needs(request)
        decision = decision or await self.route_request(request, needs)
        refusal = aggregation_error(needs, decision.experts)
        if refusal is not None:
            raise refusal
        route_ms = (time.perf_counter() - started) * 1000
        # A named expert that is loading: wait, within a bound, then 503. Routed requests go on:
        # dispatch's fallback and breakers move them to a live expert (a lost node's expert is
        # "failed" here, and a 503 would fail requests another expert can answer).
        if self.readiness is not None and decision.recruitment is None:
            await self.readiness.wait_for(decision.experts)
        self.observer.routed(request_id, decision, route_ms / 1000)
        expert_request = self.expert_request(request, request_id)
        if len(decision.experts) > 1:
            answer = self.aggregate(decision, expert_request)
        else:
            answer = self.dispatch(decision, expert_request, buffered=not request.stream)
        routing = decision.to_dict() | {"fallbacks": answer.fallbacks}  # filled as they happen
        extension = {"request_id": request_id, "routing": routing, "route_ms": round(route_ms, 3)}
        if isinstance(answer, AggregatedAnswer):
            extension["aggregation"] = answer.info  # filled as the experts answer
        deltas = self._observed(request_id, answer, started)
        return Answer(request_id, decision, deltas, extension)

    async def route_request(
        self, request: protocol.ChatCompletionRequest, needs: Needs | None = None
    ) -> RoutingDecision:
        """Route a chat request among the experts that can serve it (a 400 when none can)."""
        needs = needs or await self.needs(request)
        excluded = self.excluded(request.model, needs)
        return await self.route(request.last_user_text(), request.model, excluded)

    async def prompt_tokens(
        self, request: protocol.ChatCompletionRequest
    ) -> tuple[RoutingDecision, dict[str, int]]:
        """Route `request` without generating; with the prompt's length in each candidate's own
        tokens (only hosted experts are counted: a remote expert's tokenizer is not known)."""
        needs = await self.needs(request)
        return await self.route_request(request, needs), needs.prompt_tokens

    async def needs(self, request: protocol.ChatCompletionRequest) -> Needs:
        """What the request needs from its expert; the prompt counted in each candidate's tokens
        (in a worker thread: a long prompt takes milliseconds to tokenize)."""
        counts: dict[str, int] = {}
        if self.counter is not None:
            messages = request.plain_messages()
            tools = request.expert_params().get("tools") if request.calls_tools else None
            for name in self.candidates(request.model):
                n = await asyncio.to_thread(self.counter.count, name, messages, tools,
                                            request.continue_final_message)  # fmt: skip
                if n is not None:
                    counts[name] = n
        return Needs(tools=request.calls_tools, structured_output=request.structured,
                     logprobs=request.logprobs, top_logprobs=request.top_logprobs or 0,
                     top_k=(request.top_k or 0) > 0, prefill=request.continue_final_message,
                     prompt_tokens=counts)  # fmt: skip

    def candidates(self, model: str) -> list[str]:
        """The experts `model` may use (an unknown model has none; routing reports it)."""
        if any(e.name == model for e in self.registry.experts):
            return [model]
        virtual = self.registry.virtual_model(model)
        if virtual is None:
            return []
        return virtual.experts or [e.name for e in self.registry.experts]

    def excluded(self, model: str, needs: Needs) -> dict[str, str]:
        """Experts of `model` that cannot serve `needs`, with why; a 400 when none can."""
        candidates = self.candidates(model)
        out = exclusions(self.registry, needs, candidates)
        if candidates and len(out) == len(candidates):
            raise no_expert_error(model, out)
        return {name: why.reason for name, why in out.items()}

    async def route(
        self, text: str, model: str, exclude: dict[str, str] | None = None
    ) -> RoutingDecision:
        """classify → recruit (router/), within `router.route_timeout_s`; `exclude`: experts
        that cannot serve this request (router/eligibility.py), with why."""
        limit = self.registry.router.route_timeout_s
        try:
            async with asyncio.timeout(limit):  # in this task: no extra task per request
                if exclude:
                    return await self.route_fn(text, model, exclude)
                return await self.route_fn(text, model)
        except TimeoutError:
            raise RoutingTimeoutError(
                f"routing took longer than {limit:g}s (router.route_timeout_s); the router is "
                "overloaded: retry, or add ingress replicas"
            ) from None

    def expert_request(
        self, request: protocol.ChatCompletionRequest, request_id: str
    ) -> ExpertRequest:
        return ExpertRequest(
            request_id=request_id,
            messages=request.plain_messages(),
            max_tokens=request.token_limit(self.registry.router.default_max_tokens),
            temperature=request.temperature,
            top_p=request.top_p,
            stop=request.stop,
            seed=request.seed,
            **request.expert_params(),
        )

    def dispatch(
        self, decision: RoutingDecision, request: ExpertRequest, buffered: bool
    ) -> FallbackStream:
        """One expert answers. Named experts never change; routed ones may fall back along the
        ranking. `buffered`: nothing is sent before the end, so a failure midway is retried."""
        return self.faults.stream(
            request,
            fallback_order(decision.experts, decision.recruitment),
            allow_fallback=decision.recruitment is not None,
            buffered=buffered,
        )

    def aggregate(self, decision: RoutingDecision, request: ExpertRequest) -> AggregatedAnswer:
        """k > 1 experts answer and one answer comes back (serving/aggregate.py)."""
        return AggregatedAnswer(self.registry, self.clients, decision, request)

    async def _observed(
        self, request_id: str, answer: FallbackStream | AggregatedAnswer, started: float
    ) -> AsyncIterator[Delta]:
        """Pass deltas through, reporting first token and the end (ok or the error) once."""
        last: Delta | None = None
        status = "ok"
        try:
            async for delta in answer:
                if last is None:
                    self.observer.first_token(
                        request_id, answer.expert, time.perf_counter() - started
                    )
                last = delta
                yield delta
        except QuorumError as exc:
            status = exc.code or exc.type
            raise
        except BaseException:
            status = "cancelled"
            raise
        finally:
            if last is not None:
                record_tokens(last.prompt_tokens, last.completion_tokens)  # the key's budget
            self.observer.finished(
                request_id, answer.expert, status, last, time.perf_counter() - started
            )

    # -- respond ---------------------------------------------------------------------------------

    async def gather(
        self, request: protocol.ChatCompletionRequest, decision: RoutingDecision | None = None
    ) -> tuple[Answer, AnswerParts]:
        """The whole answer: text, logprobs, tool calls and the last delta."""
        answer = await self.answer(request, decision)
        parts = AnswerParts(want_logprobs=request.logprobs)
        async for delta in answer.deltas:
            parts.add(delta)
        if parts.last is None:
            raise ExpertError(
                f"expert '{answer.decision.experts[0]}' closed its stream without answering"
            )
        return answer, parts

    async def complete(
        self, request: protocol.ChatCompletionRequest, decision: RoutingDecision | None = None
    ) -> tuple[dict, dict]:
        """Non-streaming: the completion body (`n` choices, routed once) and the headers."""
        if request.n > 1:
            decision = decision or await self.route_request(request)
        answers = await _all([self.gather(r, decision) for r in request.choices()])
        answer, first = answers[0]
        if request.n > 1:  # each choice is its own answer, with its own routing record
            answer.extension["choices"] = [a.request_id for a, _ in answers]
        choices = [protocol.choice(i, p.text, p.last.finish_reason, p.tool_calls or None,
                                   p.logprobs_or_none()) for i, (_, p) in enumerate(answers)]  # fmt: skip
        completion_tokens = sum(parts.last.completion_tokens for _, parts in answers)
        body = protocol.completion(
            answer.request_id, answered_by(answer.decision, answer.extension), choices,
            protocol.usage(first.last.prompt_tokens, completion_tokens, first.last.cached_tokens),
            answer.extension,
        )  # fmt: skip
        return body, routing_headers(answer.request_id, answer.decision, answer.extension)

    async def start(
        self, request: protocol.ChatCompletionRequest, decision: RoutingDecision | None = None
    ) -> Started:
        """A streamed answer, begun: the first delta is awaited, so an expert that fails at once
        still gets a proper HTTP error status instead of a 200."""
        answer = await self.answer(request, decision)
        iterator = aiter(answer.deltas)
        try:
            first = await anext(iterator)
        except StopAsyncIteration:
            raise ExpertError(
                f"expert '{answer.decision.experts[0]}' closed its stream without answering"
            ) from None
        model = answered_by(answer.decision, answer.extension)
        headers = routing_headers(answer.request_id, answer.decision, answer.extension)
        return Started(answer, model, first, iterator, headers)

    async def stream(
        self, request: protocol.ChatCompletionRequest
    ) -> tuple[AsyncIterator[bytes], dict]:
        """Streaming: OpenAI's SSE bytes (`n` choices, routed once, interleaved) and the
        headers."""
        decision = await self.route_request(request) if request.n > 1 else None
        starts = await _all([self.start(r, decision) for r in request.choices()])
        options = request.streaming
        head, created = starts[0], int(time.time())
        choices = [
            ChoiceStream(head.answer.request_id, head.model, created, s.first, s.rest,
                         s.answer.extension, index=i, want_logprobs=request.logprobs,
                         obfuscate=options.include_obfuscation)
            for i, s in enumerate(starts)
        ]  # fmt: skip
        return sse_events(choices, options.include_usage), head.headers

    def models(self) -> list[dict]:
        """`/v1/models`: the virtual models that route, then every expert. Each row has OpenAI's
        fields and Anthropic's (`type`, `display_name`, `created_at`), so both clients read it."""
        states = self.readiness.snapshot() if self.readiness is not None else {}
        rows = [_model_row(v.name, f"{v.name} (Quorum router)",
                           {"kind": "router", "description": v.description})
                for v in self.registry.virtual_models]  # fmt: skip
        rows += [
            _model_row(e.name, e.name, {
                "kind": "expert", "backend": e.backend, "context_length": e.context_length,
                "cost": e.cost.model_dump(), "can_aggregate": e.can_aggregate,
                "capabilities": e.capabilities.model_dump(),
                **({"readiness": states[e.name]} if e.name in states else {})})
            for e in self.registry.experts
        ]  # fmt: skip
        return rows

    def model(self, name: str) -> dict:
        """`/v1/models/{name}`: that row of `models()`, or the 404 listing every model."""
        row = next((row for row in self.models() if row["id"] == name), None)
        if row is None:
            raise self.registry.unknown_model(name)
        return row


def _model_row(name: str, display: str, extension: dict) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "quorum", "type": "model",
            "display_name": display, "created_at": "1970-01-01T00:00:00Z", "quorum": extension}


def answered_by(decision: RoutingDecision, extension: dict) -> str:
    """The expert whose answer is returned: the chosen one, or the last fallback's target."""
    fallbacks = extension.get("routing", {}).get("fallbacks") or []
    return fallbacks[-1]["to"] if fallbacks else decision.experts[0]


def routing_headers(
    request_id: str, decision: RoutingDecision, extension: dict | None = None
) -> dict[str, str]:
    experts = decision.experts
    fallbacks = (extension or {}).get("routing", {}).get("fallbacks") or []
    if fallbacks:
        experts = [answered_by(decision, extension or {})]
    headers = {"x-quorum-request-id": request_id, "x-quorum-expert": ",".join(experts)}
    if fallbacks:
        headers["x-quorum-fallbacks"] = str(len(fallbacks))
    if decision.skills:
        headers["x-quorum-skill"] = decision.skills[0]["skill"]
        headers["x-quorum-skill-probability"] = f"{decision.skills[0]['probability']:.4f}"
    if decision.confidence is not None:
        headers["x-quorum-confidence"] = f"{decision.confidence:.4f}"
    return headers


async def _all(starting: list[Awaitable[T]]) -> list[T]:
    """Every result, or the first failure once all have settled (streams already begun are
    closed, so no expert keeps generating for an answer nobody reads). One is awaited in place:
    the usual request runs in its handler's task."""
    if len(starting) == 1:
        return [await starting[0]]
    results = await asyncio.gather(*starting, return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if not failed:
        return results
    for result in results:
        if isinstance(result, Started):
            await result.rest.aclose()
    raise failed[0]
