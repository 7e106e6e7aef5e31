"""Stage 6 of the pipeline: aggregate. Several experts answer one query; one answer comes back.

`answer_with_experts(...)` asks the recruited experts concurrently (through their `ExpertClient`s,
so through the scheduler's per-expert queues when one is configured) and hands their answers to an
`Aggregator`:

| name         | how                                                                          |
|--------------|------------------------------------------------------------------------------|
| `synthesis`  | an aggregator expert (chosen per skill by measured ability, `router.recruit`) |
|              | reads the question and the answers and writes the final one (Symbolic-MoE);   |
|              | its output streams                                                            |
| `vote`       | majority over extracted answers (multiple-choice letter, else a number),     |
|              | weighted by the router's predicted competence; ties go to the better expert  |
| `confidence` | the answer of the expert the router predicted most likely right              |

`vote` and `confidence` cannot speak before every expert has answered, so they send the chosen
answer as one delta. Answers that failed are left out (the `aggregation.failed` field names
them); only when every expert fails does the request fail. How answers are read, voted on and put
before the aggregator is `experts/answers.py`: the rules the profiling job measures with.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from experts.answers import competence_weights, extract_answer, synthesis_messages, vote
from experts.clients import ExpertClient
from experts.errors import ExpertError, QuorumError
from experts.stream import Delta, ExpertRequest, collect, with_timeout

__all__ = ["AGGREGATORS", "Aggregator", "ExpertAnswer", "LLMSynthesis", "MajorityVote",
           "MostConfident", "answer_with_experts"]  # fmt: skip

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExpertAnswer:
    """One expert's whole answer and the router's predicted P(correct) for it."""

    expert: str
    text: str
    confidence: float
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Aggregator(ABC):
    """Combines answers (best-ranked expert first) into one answer, as deltas."""

    name: str

    @abstractmethod
    def combine(
        self, messages: list[dict[str, str]], answers: Sequence[ExpertAnswer], info: dict[str, Any]
    ) -> AsyncIterator[Delta]:
        """Yield the final answer (the `ExpertClient` streaming contract); note in `info` what
        was decided (it travels in the response's `quorum.aggregation`)."""


async def _one(text: str, answers: Sequence[ExpertAnswer]) -> AsyncIterator[Delta]:
    yield Delta(text, "stop", sum(a.prompt_tokens for a in answers),
                sum(a.completion_tokens for a in answers))  # fmt: skip


class MostConfident(Aggregator):
    name = "confidence"

    def combine(self, messages, answers, info):
        best = max(answers, key=lambda a: a.confidence)  # max keeps the first of equals
        info["chosen"] = best.expert
        return _one(best.text, answers)


class MajorityVote(Aggregator):
    """Weighted plurality over extracted answers (experts/answers.vote); the winning
    answer's text is that of the best-ranked expert who gave it."""

    name = "vote"

    def __init__(self, n_choices: int = 10) -> None:
        self.n_choices = n_choices

    def combine(self, messages, answers, info):
        extracted = [extract_answer(a.text) for a in answers]
        weights = competence_weights([a.confidence for a in answers], self.n_choices)
        winner = vote(extracted, weights.tolist())
        info["votes"] = {a.expert: x for a, x in zip(answers, extracted, strict=True)}
        info["winner"] = winner
        if winner is None:  # nobody committed to an answer: fall back, and say so
            info["fallback"] = "no extractable answer; most confident expert"
            return MostConfident().combine(messages, answers, info)
        chosen = next(a for a, x in zip(answers, extracted, strict=True) if x == winner)
        info["chosen"] = chosen.expert
        return _one(chosen.text, answers)


class LLMSynthesis(Aggregator):
    """An aggregator expert writes the final answer; its deltas stream through."""

    name = "synthesis"

    def __init__(self, client: ExpertClient, request: ExpertRequest, timeout_s: float) -> None:
        self.client, self.request, self.timeout_s = client, request, timeout_s

    async def combine(self, messages, answers, info):
        info["aggregator"] = self.client.name
        request = dataclasses.replace(self.request, request_id=f"{self.request.request_id}-agg",
                                      messages=synthesis_messages(messages, [a.text for a in answers]))  # fmt: skip
        prompt = sum(a.prompt_tokens for a in answers)
        completion = sum(a.completion_tokens for a in answers)
        stream = with_timeout(self.client.stream_chat(request), self.client.name, self.timeout_s)
        async for d in stream:
            if d.finish_reason is None:
                yield d
            else:  # usage covers every expert and the aggregator
                yield Delta(d.text, d.finish_reason, prompt + d.prompt_tokens,
                            completion + d.completion_tokens)  # fmt: skip


AGGREGATORS: dict[str, type[Aggregator]] = {
    "synthesis": LLMSynthesis, "vote": MajorityVote, "confidence": MostConfident,
}  # fmt: skip


def _record(mode: str) -> None:
    try:
        from serving import metrics

        metrics.record_aggregation(mode)
    except Exception:  # metrics are optional (no Ray in unit tests); never fail a request on them
        log.debug("record_aggregation failed", exc_info=True)


async def _ask(client: ExpertClient, request: ExpertRequest, timeout_s: float) -> tuple[str, Delta]:
    return await collect(with_timeout(client.stream_chat(request), client.name, timeout_s))


async def answer_with_experts(
    request: ExpertRequest,
    experts: Sequence[str],
    clients: dict[str, ExpertClient],
    *,
    mode: str,
    confidences: Sequence[float],
    timeouts: dict[str, float],
    aggregator: str | None = None,
    info: dict[str, Any] | None = None,
) -> AsyncIterator[Delta]:
    """Ask `experts` (best first) concurrently, then aggregate with `mode` (see the module).

    `aggregator` names the synthesis expert (mode `synthesis`; without one, `vote` is used and
    `info["fallback"]` says so). `info` is filled as it goes: mode, experts, per-expert answers.
    """
    info = {} if info is None else info
    if mode == "synthesis" and aggregator is None:
        info["fallback"] = "no aggregator expert available; majority vote"
        mode = "vote"
    if mode not in AGGREGATORS:
        raise ValueError(f"aggregation '{mode}' is unknown; known: {', '.join(AGGREGATORS)}")
    info.update(mode=mode, experts=list(experts))
    _record(mode)
    asks = [
        _ask(clients[e], dataclasses.replace(request, request_id=f"{request.request_id}-{i}"),
             timeouts.get(e, 120.0))
        for i, e in enumerate(experts)
    ]  # fmt: skip
    results = await asyncio.gather(*asks, return_exceptions=True)
    answers: list[ExpertAnswer] = []
    failed: dict[str, str] = {}
    for name, conf, result in zip(experts, confidences, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result
            failed[name] = result.message if isinstance(result, QuorumError) else repr(result)
            continue
        text, last = result
        answers.append(ExpertAnswer(name, text, conf, last.prompt_tokens, last.completion_tokens))
    info["answers"] = [{"expert": a.expert, "text": a.text} for a in answers]
    if failed:
        info["failed"] = failed
    if not answers:
        first = next(r for r in results if isinstance(r, Exception))
        if isinstance(first, QuorumError):
            raise first
        raise ExpertError(f"every recruited expert failed: {failed}")
    if mode == "synthesis":
        agg: Aggregator = LLMSynthesis(clients[aggregator], request, timeouts.get(aggregator, 120.0))
    else:
        agg = AGGREGATORS[mode]()
    async for delta in agg.combine(request.messages, answers, info):
        yield delta


class AggregatedAnswer:
    """The k > 1 answer for the ingress: iterates like its single-expert answer stream and
    carries `expert` (who writes the final text), `fallbacks` (none here: a failed expert is
    left out instead, see `info["failed"]`) and `info` (→ the response's `quorum.aggregation`)."""

    def __init__(self, registry: Any, clients: dict[str, ExpertClient], decision: Any,
                 request: ExpertRequest) -> None:  # fmt: skip
        recruitment = decision.recruitment or {}
        quality = {s["expert"]: s["quality"] for s in recruitment.get("scores", [])}
        self.mode = recruitment.get("aggregation") or registry.router.aggregation
        self.aggregator = recruitment.get("aggregator")
        self.expert = self.aggregator if self.mode == "synthesis" and self.aggregator else self.mode
        self.fallbacks: list[dict] = []
        self.info: dict[str, Any] = {}
        self._stream = answer_with_experts(
            request, decision.experts, clients, mode=self.mode, aggregator=self.aggregator,
            confidences=[quality.get(e, 0.5) for e in decision.experts],
            timeouts={e.name: e.timeout_s for e in registry.experts}, info=self.info,
        )  # fmt: skip

    def __aiter__(self) -> AsyncIterator[Delta]:
        return self._stream

    async def aclose(self) -> None:
        await self._stream.aclose()
