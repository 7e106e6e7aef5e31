"""Every OpenAI chat parameter is honoured (carried to the expert, returned in OpenAI's shape) or
refused with a 400 naming it: the in-memory app with scripted experts, driven through raw HTTP
and through the official `openai` client."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from experts.clients import OpenAIHTTPExpertClient
from experts.errors import ExpertError, InvalidRequestError
from experts.registry import Expert, parse_registry
from experts.stream import ExpertRequest, collect
from serving.chat_params import REFUSED
from tests.fakes import FakeExpert
from tests.unit.test_api import REGISTRY, chat
from tests.unit.test_api import make_client as api_client

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object",
                                          "properties": {"city": {"type": "string"}}}}}  # fmt: skip
CALL = {"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}  # fmt: skip
# test_api's registry, the experts able to call tools (hermes parser)
TOOLED = parse_registry(REGISTRY.model_dump(mode="json") | {"experts": [
    e.model_dump(mode="json") | {"capabilities": {"tool_parser": "hermes"}}
    for e in REGISTRY.experts]})  # fmt: skip


def make_client(**kwargs):
    return api_client(registry=TOOLED, **kwargs)


SCHEMA = {"type": "json_schema",
          "json_schema": {"name": "city", "schema": {"type": "object"}, "strict": True}}  # fmt: skip


def assert_refused(response, param: str, *words: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    for word in words:
        assert word in error["message"], error["message"]


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_each_unsupported_parameter_is_refused_by_name(name):
    client, experts = make_client()
    value = {"modalities": ["text", "audio"], "store": True, "service_tier": "flex"}.get(name, {})
    assert_refused(chat(client, **{name: value}), name, name)
    assert_refused(chat(client, **{name: [{"odd": 1}]}), name, name)  # unhashable: still a 400
    assert experts["mathematician"].calls == 0
    assert chat(client).status_code == 200  # and the service keeps serving


@pytest.mark.parametrize("name, noop", [("store", False), ("service_tier", "auto"),
                                        ("service_tier", "default"), ("modalities", ["text"]),
                                        ("metadata", None)])  # fmt: skip
def test_no_op_values_of_unsupported_parameters_pass(name, noop):
    client, _ = make_client()
    assert chat(client, **{name: noop}).status_code == 200


def test_an_unknown_parameter_is_refused_not_ignored():
    client, _ = make_client()
    assert_refused(chat(client, temprature=0.2), "temprature", "unrecognized")


@pytest.mark.parametrize("body, param, words", [
    ({"top_logprobs": 2}, "top_logprobs", ["logprobs"]),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", []),
    ({"tool_choice": "required"}, "tool_choice", ["tools"]),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice", ["nope", "get_weather"]),
    ({"tools": []}, "tools", []),
    ({"tools": [{"type": "retrieval"}]}, "tools", []),
    ({"response_format": {"type": "json_schema"}}, "response_format", ["json_schema"]),
    ({"response_format": {"type": "xml"}}, "response_format", []),
    ({"logit_bias": {"hello": 5}}, "logit_bias", ["token id"]),
    ({"logit_bias": {"42": 500}}, "logit_bias", ["[-100, 100]"]),
    ({"presence_penalty": 3}, "presence_penalty", []),
    ({"frequency_penalty": -2.5}, "frequency_penalty", []),
    ({"stream_options": {"include_usage": True}}, "stream_options", ["stream"]),
    ({"stream": True, "stream_options": {"include_usage": True, "usage": 1}}, "stream_options",
     ["usage"]),
    ({"top_k": -2}, "top_k", []),
    ({"continue_final_message": True}, "continue_final_message", ["assistant"]),
    ({"messages": [{"role": "user", "content": "x", "audio": {"id": "a"}}]}, "messages", ["audio"]),
    ({"messages": [{"role": "tool", "content": "72F"}]}, "messages", ["tool_call_id"]),
])  # fmt: skip
def test_invalid_parameter_values_get_a_400_naming_them(body, param, words):
    client, _ = make_client()
    assert_refused(chat(client, **body), param, *words)


def test_every_honoured_parameter_reaches_the_expert_as_sent():
    client, experts = make_client()
    messages = [
        {"role": "user", "content": "solve the equation for x", "name": "ada"},
        {"role": "assistant", "content": None, "tool_calls": [CALL], "refusal": None},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    body = dict(model="mathematician", messages=messages, max_completion_tokens=5, stop="END",
                seed=3, presence_penalty=0.5, frequency_penalty=-0.5, logit_bias={"42": -100},
                logprobs=True, top_logprobs=2, response_format=SCHEMA, tools=[WEATHER],
                tool_choice={"type": "function", "function": {"name": "get_weather"}},
                parallel_tool_calls=False, user="u-7", temperature=0.3, top_p=0.9)  # fmt: skip
    assert chat(client, **body).status_code == 200

    sent = experts["mathematician"].requests[0]
    assert (sent.max_tokens, sent.stop, sent.seed, sent.temperature, sent.top_p) == (
        5, ["END"], 3, 0.3, 0.9)  # fmt: skip
    assert sent.openai_params() == {
        "stop": ["END"], "seed": 3, "presence_penalty": 0.5, "frequency_penalty": -0.5,
        "logit_bias": {"42": -100}, "logprobs": True, "top_logprobs": 2,
        "response_format": SCHEMA, "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False, "user": "u-7",
    }  # fmt: skip
    assert sent.messages == [
        {"role": "user", "content": "solve the equation for x", "name": "ada"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
    ]


def openai_client(client) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client)


def test_tool_calls_and_logprobs_come_back_in_openais_shape():
    client, _ = make_client(overrides={"mathematician": FakeExpert(
        "mathematician", ["", ""], tool_calls=[CALL], finish_reason="tool_calls")})  # fmt: skip
    done = openai_client(client).chat.completions.create(
        model="mathematician", messages=[{"role": "user", "content": "weather?"}],
        tools=[WEATHER], tool_choice="required")  # fmt: skip

    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls[0].function.name == "get_weather"
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {"city": "Paris"}
    assert choice.message.tool_calls[0].id == "call_1"


def test_streamed_tool_calls_accumulate_in_the_openai_client():
    client, _ = make_client(overrides={"mathematician": FakeExpert(
        "mathematician", "", tool_calls=[CALL, CALL | {"id": "call_2"}],
        finish_reason="tool_calls")})  # fmt: skip
    stream = openai_client(client).chat.completions.create(
        model="mathematician", messages=[{"role": "user", "content": "weather?"}],
        tools=[WEATHER], stream=True)  # fmt: skip
    calls: dict[int, dict] = {}
    finish = None
    for piece in stream:
        for choice in piece.choices:
            finish = choice.finish_reason or finish
            for call in choice.delta.tool_calls or []:
                calls[call.index] = {"id": call.id, "name": call.function.name,
                                     "arguments": call.function.arguments}  # fmt: skip
    assert finish == "tool_calls"
    assert [c["id"] for c in calls.values()] == ["call_1", "call_2"]
    assert calls[0]["arguments"] == '{"city": "Paris"}'


def test_logprobs_returned_only_when_asked_streaming_and_not():
    client, _ = make_client(overrides={"mathematician": FakeExpert(
        "mathematician", "a b c", words="leading", logprob=-0.25)})  # fmt: skip
    oa = openai_client(client)
    ask = {"model": "mathematician", "messages": [{"role": "user", "content": "x"}]}

    plain = oa.chat.completions.create(**ask)
    assert plain.choices[0].logprobs is None
    done = oa.chat.completions.create(**ask, logprobs=True, top_logprobs=1)
    tokens = done.choices[0].logprobs.content
    assert [t.token for t in tokens] == ["a", " b", " c"]
    assert all(t.logprob == -0.25 for t in tokens)
    streamed = [t.token for piece in oa.chat.completions.create(**ask, logprobs=True, stream=True)
                for c in piece.choices if c.logprobs for t in c.logprobs.content or []]  # fmt: skip
    assert streamed == ["a", " b", " c"]


def test_include_usage_adds_the_usage_chunk():
    client, _ = make_client()
    pieces = list(openai_client(client).chat.completions.create(
        model="mathematician", messages=[{"role": "user", "content": "x y"}], stream=True,
        stream_options={"include_usage": True}))  # fmt: skip
    assert pieces[-1].choices == [] and pieces[-1].usage.prompt_tokens == 11


def test_stream_obfuscation_pads_content_chunks_unless_turned_off():
    oa = openai_client(make_client()[0])
    ask = {"model": "mathematician", "messages": [{"role": "user", "content": "x y"}],
           "stream": True}  # fmt: skip
    texts = [(c.choices[0].delta.content, c.obfuscation)
             for c in oa.chat.completions.create(**ask) if c.choices and c.choices[0].delta.content]  # fmt: skip
    assert texts and all((len(t) + len(pad)) % 32 == 0 and len(pad) >= 8 for t, pad in texts)
    assert len({pad for _, pad in texts}) == len(texts)  # random, not a constant filler
    plain = list(oa.chat.completions.create(**ask, stream_options={"include_obfuscation": False}))
    assert plain and all(c.obfuscation is None for c in plain)
    legacy = [c for c in oa.completions.create(model="mathematician", prompt="x y", stream=True)
              if c.choices[0].text]  # fmt: skip
    assert legacy and all(len(c.obfuscation) >= 8 for c in legacy)


async def test_openai_backend_receives_every_parameter_verbatim_and_returns_calls():
    seen: list[dict] = []

    def server(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        events = [
            {"choices": [{"delta": {"content": "hi"}, "logprobs": {"content": [
                {"token": "hi", "logprob": -0.1, "bytes": [104, 105], "top_logprobs": []}]}}]},
            {"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "c9", "type": "function",
                                                    "function": {"name": "get_weather",
                                                                 "arguments": '{"ci'}}]}}]},
            {"choices": [{"delta": {"tool_calls": [{"index": 0,
                                                    "function": {"arguments": 'ty": "Oslo"}'}}]},
                          "finish_reason": "tool_calls"}]},
            {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4,
                                      "prompt_tokens_details": {"cached_tokens": 6}}},
        ]  # fmt: skip
        text = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})

    expert = Expert(name="remote", model="m", backend="openai", base_url="http://remote/v1")
    client = OpenAIHTTPExpertClient(
        expert, httpx.AsyncClient(transport=httpx.MockTransport(server))
    )
    request = ExpertRequest("r", [{"role": "user", "content": "q"}], 8, seed=1, logprobs=True,
                            top_logprobs=0, tools=[WEATHER], tool_choice="auto",
                            response_format={"type": "json_object"}, logit_bias={"5": 1.0},
                            user="u", presence_penalty=0.1, stop=["x"])  # fmt: skip
    deltas = [d async for d in client.stream_chat(request)]
    text, last = await collect(_replay(deltas))

    assert seen[0] | {} == {
        "model": "m", "messages": request.messages, "max_tokens": 8, "temperature": 1.0,
        "top_p": 1.0, "stream": True, "stream_options": {"include_usage": True},
        **request.openai_params(),
    }  # fmt: skip
    assert seen[0]["tool_choice"] == "auto" and seen[0]["logit_bias"] == {"5": 1.0}
    assert text == "hi" and deltas[0].logprobs[0]["token"] == "hi"
    assert last.finish_reason == "tool_calls"
    assert (last.prompt_tokens, last.completion_tokens, last.cached_tokens) == (9, 4, 6)
    assert last.tool_calls == [{"id": "c9", "type": "function",
                                "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]  # fmt: skip


async def test_openai_backend_reports_the_stop_string_a_vllm_server_names():
    def server(request: httpx.Request) -> httpx.Response:
        events = [{"choices": [{"delta": {"content": "Paris"}}]},
                  {"choices": [{"delta": {}, "finish_reason": "stop", "stop_reason": "."}]}]  # fmt: skip
        text = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})

    expert = Expert(name="remote", model="m", backend="openai", base_url="http://remote/v1")
    client = OpenAIHTTPExpertClient(
        expert, httpx.AsyncClient(transport=httpx.MockTransport(server))
    )
    for stop, reported in ((["."], "."), (["!"], None), (None, None)):
        request = ExpertRequest("r", [{"role": "user", "content": "q"}], 8, stop=stop)
        _, last = await collect(client.stream_chat(request))
        assert last.stop == reported, stop


async def _replay(deltas):
    for d in deltas:
        yield d


# -- n: several choices ---------------------------------------------------------------------------


async def test_n_choices_are_answers_of_one_routing_with_seeds_apart():
    from router import RoutingDecision
    from serving.pipeline import Pipeline
    from serving.protocol import parse_chat_request

    routed: list[str] = []

    async def route(text, model, exclude=None):
        routed.append(text)
        return RoutingDecision(model, ["mathematician"], [], None, None)

    math = FakeExpert("mathematician", "x is 2", words="leading", prompt_tokens=7)
    pipeline = Pipeline(TOOLED, route, {"mathematician": math})
    request = parse_chat_request({"model": "auto", "n": 3, "seed": 5, "messages": [
        {"role": "user", "content": "solve"}]}, 8)  # fmt: skip
    body, _ = await pipeline.complete(request)

    assert len(routed) == 1  # the choices share one routing decision
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert all(c["message"]["content"] == "x is 2" for c in body["choices"])
    assert [r.seed for r in math.requests] == [5, 6, 7]  # distinct, and each repeatable
    assert len({r.request_id for r in math.requests}) == 3
    assert body["quorum"]["choices"] == [r.request_id for r in math.requests]
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16}


def test_n_choices_stream_interleaved_by_index_with_the_usage_of_all():
    oa = openai_client(make_client()[0])
    pieces = list(oa.chat.completions.create(
        model="mathematician", messages=[{"role": "user", "content": "x y"}], n=2, stream=True,
        stream_options={"include_usage": True}))  # fmt: skip
    texts, finishes = {0: "", 1: ""}, {}
    for piece in pieces:
        for c in piece.choices:
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
    single = openai_client(make_client()[0]).chat.completions.create(
        model="mathematician", messages=[{"role": "user", "content": "x y"}])  # fmt: skip
    assert texts == {0: single.choices[0].message.content, 1: single.choices[0].message.content}
    assert finishes == {0: "stop", 1: "stop"}
    assert len({p.id for p in pieces}) == 1  # one completion, two choices
    assert pieces[-1].usage.completion_tokens == 2 * single.usage.completion_tokens
    assert pieces[-1].usage.prompt_tokens == single.usage.prompt_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_one_failed_choice_fails_the_request(stream):
    # a 400 from the expert is not retried: one choice fails, the other answers
    once = FakeExpert("flaky", "x", error=InvalidRequestError("bad seed", param="seed"), fail=1)
    client, _ = make_client(overrides={"flaky": once})
    r = chat(client, model="flaky", n=2, stream=stream)
    assert r.status_code == 400 and r.json()["error"]["param"] == "seed" and once.calls == 2


def test_a_choice_failing_midstream_ends_the_stream_with_an_error_event():
    once = FakeExpert("flaky", "x y z", words="leading", error=ExpertError("engine died"), fail=1,
                      fail_after=1)  # fmt: skip
    client, _ = make_client(overrides={"flaky": once})
    r = chat(client, model="flaky", n=2, stream=True)
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert r.status_code == 200 and "engine died" in events[-1] and "[DONE]" not in events


def test_allowed_tools_sends_the_expert_only_those_with_the_mode_as_tool_choice():
    client, experts = make_client()
    clock = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
    allowed = {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
        {"type": "function", "function": {"name": "get_time"}}]}}  # fmt: skip
    assert chat(client, model="mathematician", tools=[WEATHER, clock],
                tool_choice=allowed).status_code == 200  # fmt: skip
    sent = experts["mathematician"].requests[-1]
    assert sent.tools == [clock] and sent.tool_choice == "required"
    allowed["allowed_tools"]["tools"][0]["function"]["name"] = "get_stock"
    assert_refused(chat(client, model="mathematician", tools=[WEATHER, clock], tool_choice=allowed),
                   "tool_choice", "get_stock", "is not in 'tools'")  # fmt: skip


def test_cached_prompt_tokens_are_reported_when_the_expert_says_and_only_then():
    cached = FakeExpert("mathematician", "x", prompt_tokens=9, cached_tokens=8)
    oa = openai_client(make_client(overrides={"mathematician": cached})[0])
    ask = {"model": "mathematician", "messages": [{"role": "user", "content": "x"}]}
    assert oa.chat.completions.create(**ask).usage.prompt_tokens_details.cached_tokens == 8
    *_, last = oa.chat.completions.create(**ask, stream=True,
                                          stream_options={"include_usage": True})  # fmt: skip
    assert last.usage.prompt_tokens_details.cached_tokens == 8
    done = oa.responses.create(model="mathematician", input="x")
    assert done.usage.input_tokens_details.cached_tokens == 8
    plain = openai_client(make_client()[0])  # the fakes of test_api do not say
    assert plain.chat.completions.create(**ask).usage.prompt_tokens_details is None
    assert plain.responses.create(model="mathematician", input="x").usage.model_dump().get(
        "input_tokens_details") is None  # fmt: skip
