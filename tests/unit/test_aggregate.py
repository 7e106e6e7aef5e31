"""Multi-expert answers: answer extraction, vote, most confident, LLM synthesis, k in recruit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experts.answers import AGGREGATE_HEADER, extract_answer
from experts.errors import ExpertError, ExpertUnavailableError
from experts.registry import parse_registry
from experts.stream import Delta, ExpertRequest
from router import RoutingDecision
from router.recruit import Recruiter
from serving.aggregate import (
    AggregatedAnswer,
    ExpertAnswer,
    MajorityVote,
    answer_with_experts,
)
from skills.store import InMemoryStateStore
from tests.fakes import FakeExpert


def scripted(name: str, text: str, fail: bool = False) -> FakeExpert:
    """Answers `text` in word-sized deltas ('a ', 'b ', 'c': 10 prompt and 1 completion token
    each, the last one "stop" and the word count); `fail`: unavailable before any token."""
    return FakeExpert(name, text, words="trailing", final_delta=False, prompt_tokens=10,
                      partial_tokens=(10, 1), error=down(name) if fail else None)  # fmt: skip


def down(name: str) -> ExpertUnavailableError:
    return ExpertUnavailableError(f"expert '{name}' is down")


REQ = ExpertRequest("r1", [{"role": "user", "content": "Which is prime? A. 4 B. 6 C. 7"}], 32)


@pytest.mark.parametrize("text,expected", [
    ("The answer is (C).", "C"), ("answer: b", "B"), ("C. 7 is prime", "C"), ("I pick (D)", "D"),
    ("x = 1,024.", "1024"), ("It is 3.50 or so", "3.5"), ("I am not sure.", None),
])  # fmt: skip
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


async def _drain(stream) -> tuple[str, list[Delta]]:
    deltas = [d async for d in stream]
    return "".join(d.text for d in deltas), deltas


async def test_three_experts_one_wrong_vote_returns_the_majority_answer():
    clients = {"a": scripted("a", "The answer is (B)."),  # the best-ranked expert is the wrong one
               "b": scripted("b", "C. 7 has no divisors"), "c": scripted("c", "The answer is C")}  # fmt: skip
    info: dict = {}
    text, deltas = await _drain(answer_with_experts(
        REQ, ["a", "b", "c"], clients, mode="vote", confidences=[0.6, 0.5, 0.5], timeouts={},
        info=info))  # fmt: skip
    assert extract_answer(text) == "C" and text == "C. 7 has no divisors"
    assert info["winner"] == "C" and info["votes"] == {"a": "B", "b": "C", "c": "C"}
    assert deltas[-1].finish_reason == "stop" and deltas[-1].completion_tokens == 4 + 5 + 4


def test_vote_tie_goes_to_the_better_expert_and_no_answer_falls_back():
    tie = [ExpertAnswer("a", "(A)", 0.5), ExpertAnswer("b", "(B)", 0.5)]
    info: dict = {}
    MajorityVote().combine([], tie, info)
    assert info["winner"] == "A"
    info = {}
    MajorityVote().combine([], [ExpertAnswer("a", "hmm", 0.3), ExpertAnswer("b", "?", 0.9)], info)
    assert info["chosen"] == "b" and "fallback" in info


async def test_most_confident_picks_the_highest_predicted_quality():
    clients = {"a": scripted("a", "A"), "b": scripted("b", "B")}
    info: dict = {}
    text, _ = await _drain(answer_with_experts(REQ, ["a", "b"], clients, mode="confidence",
                                               confidences=[0.4, 0.7], timeouts={}, info=info))  # fmt: skip
    assert text == "B" and info["chosen"] == "b"


async def test_synthesis_streams_the_aggregators_answer_over_the_experts_answers():
    agg = scripted("agg", "Both say C so the answer is (C)")
    clients = {"a": scripted("a", "(C)"), "b": scripted("b", "(C) prime"), "agg": agg}
    info: dict = {}
    text, deltas = await _drain(answer_with_experts(
        REQ, ["a", "b"], clients, mode="synthesis", aggregator="agg", confidences=[0.5, 0.5],
        timeouts={}, info=info))  # fmt: skip
    assert text == "Both say C so the answer is (C)" and len(deltas) == 8  # streamed word by word
    prompt = agg.requests[0].messages[-1]["content"]
    assert AGGREGATE_HEADER in prompt and "Expert 1: (C)" in prompt and "Expert 2: (C) prime" in prompt
    assert deltas[-1].prompt_tokens == 30 and deltas[-1].completion_tokens == 1 + 2 + 8
    assert info["aggregator"] == "agg" and [a["expert"] for a in info["answers"]] == ["a", "b"]


async def test_a_failed_expert_is_left_out_and_all_failed_is_an_error():
    clients = {"a": scripted("a", "", fail=True), "b": scripted("b", "(B)"),
               "c": scripted("c", "(B)")}  # fmt: skip
    info: dict = {}
    text, _ = await _drain(answer_with_experts(REQ, ["a", "b", "c"], clients, mode="vote",
                                               confidences=[0.9, 0.5, 0.5], timeouts={}, info=info))  # fmt: skip
    assert text == "(B)" and "a" in info["failed"]
    clients["b"].error, clients["c"].error = down("b"), down("c")
    with pytest.raises(ExpertError):
        await _drain(answer_with_experts(REQ, ["a", "b", "c"], clients, mode="vote",
                                         confidences=[0.5] * 3, timeouts={}))  # fmt: skip


# -- recruitment: k, adaptive p, aggregator by measured ability ---------------------------------------


def _registry(**router):
    return parse_registry({
        "skills": ["law", "math"], "router": {"cost_weight": 0.0, **router},
        "experts": [
            {"name": "m", "model": "x", "skills": {"math": 0.9, "law": 0.1}, "can_aggregate": True},
            {"name": "j", "model": "x", "skills": {"math": 0.1, "law": 0.9}, "can_aggregate": True},
            {"name": "g", "model": "x", "default_competence": 0.5},
        ],
    })  # fmt: skip


def test_fixed_k_recruits_the_k_best_and_names_the_aggregation():
    rec = Recruiter(_registry(experts_per_query=3, aggregation="vote"), InMemoryStateStore())
    r = rec.recruit(np.array([0.0, 1.0]), "auto")
    assert r.experts == ["m", "g", "j"] and r.aggregation == "vote"
    assert rec.recruit(np.array([0.0, 1.0]), "m").experts == ["m"]  # a named expert is alone


def test_adaptive_k_is_one_when_confident_and_grows_when_not():
    rec = Recruiter(_registry(adaptive_confidence=0.9, max_experts=3), InMemoryStateStore())
    assert rec.recruit(np.array([0.0, 1.0]), "auto").experts == ["m"]  # 0.9 vs 0.5 vs 0.1
    assert len(rec.recruit(np.array([0.5, 0.5]), "auto").experts) == 3  # all three at 0.5


def test_aggregator_is_chosen_per_skill_by_measured_ability():
    store = InMemoryStateStore()
    rec = Recruiter(_registry(experts_per_query=2), store)
    assert rec.recruit(np.array([0.0, 1.0]), "auto").aggregator == "m"  # priors: m knows math
    store.publish_profile({"version": "v1", "experts": {
        "m": {"aggregator": {"competence": 0.2}},
        "j": {"aggregator": {"competence": 0.3, "skills": {"math": {"competence": 0.8}}}},
    }})  # fmt: skip
    assert rec.recruit(np.array([0.0, 1.0]), "auto").aggregator == "j"  # measured, per skill


async def test_aggregated_answer_reads_mode_and_aggregator_from_the_decision():
    registry = _registry(experts_per_query=2)
    rec = Recruiter(registry, InMemoryStateStore()).recruit(np.array([0.0, 1.0]), "auto")
    decision = RoutingDecision("auto", rec.experts, [], 0.5, rec.to_dict())
    clients = {"m": scripted("m", "(A)"), "g": scripted("g", "(B)"),
               "j": scripted("j", "x")}  # fmt: skip
    answer = AggregatedAnswer(registry, clients, decision, REQ)
    text = "".join([d.text async for d in answer])
    assert answer.expert == "m" and answer.info["mode"] == "synthesis"
    assert text == "(A)" and "Expert 2: (B)" in clients["m"].requests[-1].messages[-1]["content"]


async def test_three_experts_one_wrong_through_the_http_api_vote_and_streamed_synthesis():
    import httpx

    from serving.ingress import create_api
    from serving.pipeline import Pipeline

    registry = parse_registry({"skills": ["law", "math"],
                               "router": {"experts_per_query": 3, "aggregation": "vote"},
                               "experts": [{"name": n, "model": "x", "can_aggregate": n == "m"}
                                           for n in ("m", "j", "g")]})  # fmt: skip
    recruiter = Recruiter(registry, InMemoryStateStore())

    async def route(text, model):
        rec = recruiter.recruit(np.array([0.5, 0.5]), model)
        return RoutingDecision(model, rec.experts, [], 0.1, rec.to_dict())

    clients = {"m": scripted("m", "The answer is (B)."), "j": scripted("j", "The answer is (C)."),
               "g": scripted("g", "(C) because 7 is prime")}  # fmt: skip
    app = create_api(Pipeline(registry, route, clients))
    body = {"model": "auto", "messages": REQ.messages}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://q") as c:
        r = (await c.post("/v1/chat/completions", json=body)).json()
        assert extract_answer(r["choices"][0]["message"]["content"]) == "C"
        assert r["quorum"]["aggregation"]["winner"] == "C" and len(r["usage"]) == 3
        clients["m"].text = "Two of three say C: the answer is (C)"
        recruiter.registry = parse_registry(registry.model_dump(mode="json") | {
            "router": {"experts_per_query": 3, "aggregation": "synthesis"}})  # fmt: skip
        async with c.stream("POST", "/v1/chat/completions", json=body | {"stream": True}) as s:
            lines = [line async for line in s.aiter_lines() if line.startswith("data: {")]
    chunks = [json.loads(x[6:]) for x in lines]
    contents = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    text = "".join(c for c in contents if c)
    assert text == "Two of three say C: the answer is (C)" and sum(1 for c in contents if c) > 3
    # The aggregation record rides on the first chunk (who answered) and, complete, on the last.
    first, last = chunks[0]["quorum"]["aggregation"], chunks[-1]["quorum"]["aggregation"]
    assert first["mode"] == "synthesis" and first["aggregator"] == "m"
    assert sorted(a["expert"] for a in last["answers"]) == ["g", "j", "m"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
