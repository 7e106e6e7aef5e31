"""Routing respects what a request needs: experts that cannot serve it (tools, structured output,
logprobs, top_k, prompt length in their own tokens) are excluded with a reason in the routing
decision; no eligible expert is a 400 that says what to change; k > 1 aggregation with tools or
logprobs is refused, with a JSON format it works (every expert and the aggregator get it)."""

from __future__ import annotations

from experts.registry import parse_registry
from router.eligibility import Needs, exclusions
from tests.fakes import FakeExpert, WordCounter
from tests.unit.test_api import make_client

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
SCHEMA = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
MATH = [{"role": "user", "content": "solve the equation for x"}]
PREFILL = {"messages": [*MATH, {"role": "assistant", "content": "x ="}],
           "continue_final_message": True}  # fmt: skip

REGISTRY = parse_registry({
    "skills": ["law", "math"],
    "router": {"default_max_tokens": 7},
    "virtual_models": [{"name": "panel", "experts": ["mathematician", "jurist"],
                        "experts_per_query": 2, "aggregation": "synthesis"}],
    "experts": [
        # the best at math, but cannot call tools, has no structured output and a short context
        {"name": "mathematician", "model": "m1", "skills": {"math": 0.9, "law": 0.1},
         "context_length": 64, "capabilities": {"structured_output": False, "logprobs": False,
                                               "top_k": False, "prefill": False}},
        {"name": "jurist", "model": "m2", "skills": {"math": 0.1, "law": 0.9},
         "can_aggregate": True,
         "capabilities": {"tool_parser": "hermes", "max_top_logprobs": 5}},
        {"name": "flaky", "model": "m3", "default_competence": 0.0},
        {"name": "slow", "model": "m4", "default_competence": 0.0},
    ],
})  # fmt: skip


def client(counter=None):
    return make_client(registry=REGISTRY, counter=counter)


def post(c, **body):
    body.setdefault("model", "auto")
    body.setdefault("messages", MATH)
    return c.post("/v1/chat/completions", json=body)


def test_experts_that_cannot_call_tools_are_excluded_with_the_reason():
    c, experts = client()
    r = post(c, tools=[TOOL], tool_choice="required")

    assert r.status_code == 200, r.text
    recruitment = r.json()["quorum"]["routing"]["recruitment"]
    assert r.json()["quorum"]["routing"]["experts"] == [
        "jurist"
    ]  # mathematician ranked first before
    assert set(recruitment["excluded"]) == {"mathematician", "flaky", "slow"}
    assert "tool" in recruitment["excluded"]["mathematician"]
    assert [s["expert"] for s in recruitment["scores"]] == ["jurist"]
    assert experts["mathematician"].calls == 0


def test_without_needs_nothing_is_excluded():
    c, _ = client()
    for body in ({}, {"top_k": 0}, {"top_k": -1}):  # top_k 0 / -1: no limit, nothing needed
        routing = post(c, **body).json()["quorum"]["routing"]
        assert routing["experts"] == ["mathematician"], body
        assert routing["recruitment"]["excluded"] == {}, body


def test_structured_output_logprobs_top_k_and_prefill_exclude_experts_without_them():
    c, _ = client()
    for body in ({"response_format": SCHEMA}, {"logprobs": True}, {"top_k": 5}, PREFILL):
        routing = post(c, **body).json()["quorum"]["routing"]
        assert "mathematician" in routing["recruitment"]["excluded"], body
        assert routing["experts"] != ["mathematician"]


def test_a_request_no_expert_can_serve_gets_a_400_saying_what_to_change():
    c, experts = client()
    r = post(c, model="panel", logprobs=True, top_logprobs=10)

    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "no_eligible_expert" and error["param"] in ("logprobs", "top_logprobs")
    assert "'mathematician' returns no logprobs" in error["message"]
    assert "'jurist' returns at most 5 top_logprobs" in error["message"]
    assert "drop 'logprobs'" in error["message"] and "at most 5" in error["message"]
    assert sum(e.calls for e in experts.values()) == 0
    assert post(c, model="panel").status_code == 200  # the service keeps serving


def test_naming_an_expert_that_cannot_serve_is_a_400():
    c, _ = client()
    r = post(c, model="mathematician", tools=[TOOL])
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools"
    assert "capabilities.tool_parser" in r.json()["error"]["message"]


def test_a_prompt_too_long_in_an_experts_tokens_excludes_it():
    c, _ = client(WordCounter())
    long = [{"role": "user", "content": "solve the equation for x " * 2}]  # 10 words: 100 tokens
    r = post(c, messages=long)

    routing = r.json()["quorum"]["routing"]
    assert "100 of its tokens" in routing["recruitment"]["excluded"]["mathematician"]
    assert routing["experts"] != ["mathematician"]
    assert post(c).json()["quorum"]["routing"]["experts"] == ["mathematician"]  # 5 words fit


def test_aggregation_refuses_tools_logprobs_and_prefill_clearly():
    c, _ = client()
    assert post(c, model="jurist", tools=[TOOL], logprobs=True).status_code == 200  # one expert
    registry = parse_registry(REGISTRY.model_dump(mode="json") | {"experts": [
        e.model_dump(mode="json") | {"capabilities": {"tool_parser": "hermes"}}
        for e in REGISTRY.experts]})  # fmt: skip
    c2, _ = make_client(registry=registry)
    for body, param in (({"tools": [TOOL]}, "tools"), ({"logprobs": True}, "logprobs"),
                        (PREFILL, "continue_final_message")):  # fmt: skip
        r = c2.post("/v1/chat/completions", json={"model": "panel", "messages": MATH} | body)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == param and error["code"] == "not_aggregatable"
        assert "experts_per_query 1" in error["message"]


def test_aggregation_with_a_json_schema_gives_every_expert_and_the_aggregator_the_schema():
    registry = parse_registry(REGISTRY.model_dump(mode="json") | {"experts": [
        e.model_dump(mode="json") | {"capabilities": {}} for e in REGISTRY.experts]})  # fmt: skip
    answers = {n: FakeExpert(n, '{"a": 1}') for n in ("mathematician", "jurist")}
    c, experts = make_client(registry=registry, overrides=answers)
    r = c.post("/v1/chat/completions",
               json={"model": "panel", "messages": MATH, "response_format": SCHEMA})  # fmt: skip

    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == '{"a": 1}'
    asked = experts["mathematician"].requests + experts["jurist"].requests
    assert len(asked) == 3  # two answers and the synthesis
    assert all(q.response_format == SCHEMA for q in asked)


def test_exclusions_function_names_each_reason():
    needs = Needs(tools=True, prompt_tokens={"jurist": 5000})
    out = exclusions(REGISTRY, needs, ["mathematician", "jurist"])
    assert out["mathematician"].param == "tools"
    assert out["jurist"].param == "messages" and "5000" in out["jurist"].reason
