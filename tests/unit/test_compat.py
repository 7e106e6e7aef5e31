"""/v1/completions, /v1/responses and Anthropic's /v1/messages through the same pipeline, driven
by the official `openai` and `anthropic` clients against the in-memory app (scripted experts)."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

from tests.fakes import FakeExpert, WordCounter
from tests.unit.test_api import make_client
from tests.unit.test_chat_params import TOOLED

CALL = {"id": "call_7", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}  # fmt: skip


def clients(counter=None, **overrides):
    http, experts = make_client(registry=TOOLED, overrides=overrides, counter=counter)
    oa = openai.OpenAI(base_url="http://testserver/v1", api_key="k", http_client=http)
    an = anthropic.Anthropic(base_url="http://testserver", api_key="k", http_client=http)
    return oa, an, experts, http


# -- /v1/completions ------------------------------------------------------------------------------


def test_completions_route_the_prompt_and_return_a_text_completion():
    oa, _, experts, _ = clients()
    done = oa.completions.create(model="auto", prompt="solve the equation for x", max_tokens=5)

    assert done.object == "text_completion"
    assert done.choices[0].text == "mathematician says: solve the equation for x"
    assert done.model == "mathematician" and done.choices[0].finish_reason == "stop"
    assert done.usage.prompt_tokens == 11
    sent = experts["mathematician"].requests[0]
    assert sent.messages == [{"role": "user", "content": "solve the equation for x"}]
    assert sent.max_tokens == 5
    assert done.model_extra["quorum"]["routing"]["experts"] == ["mathematician"]


def test_completions_stream_and_legacy_logprobs():
    oa, *_ = clients(mathematician=FakeExpert("mathematician", "a b", words="leading",
                                              logprob=-0.5))  # fmt: skip
    pieces = list(oa.completions.create(model="mathematician", prompt="x", stream=True,
                                        logprobs=2, stream_options={"include_usage": True}))  # fmt: skip
    text = "".join(c.text for p in pieces for c in p.choices)
    assert text == "a b"
    tokens = [t for p in pieces for c in p.choices if c.logprobs for t in c.logprobs.tokens]
    assert tokens == ["a", " b"]
    assert [p.choices[0].finish_reason for p in pieces if p.choices][-1] == "stop"
    assert pieces[-1].usage is not None

    done = oa.completions.create(model="mathematician", prompt="x", logprobs=1)
    assert done.choices[0].logprobs.token_logprobs == [-0.5, -0.5]
    assert done.choices[0].logprobs.text_offset == [0, 1]


@pytest.mark.parametrize("body, param", [({"echo": True}, "echo"), ({"suffix": "z"}, "suffix"),
                                         ({"best_of": 2}, "best_of"), ({"prompt": [[1, 2]]}, "prompt"),
                                         ({"logprobs": 9}, "logprobs"), ({"n": 2}, "n"),
                                         ({"frobnicate": 1}, "frobnicate")])  # fmt: skip
def test_completions_refuse_what_they_do_not_serve(body, param):
    *_, http = clients()
    r = http.post("/v1/completions", json={"model": "auto", "prompt": "x", **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


# -- /v1/responses --------------------------------------------------------------------------------


def test_responses_with_instructions_and_text_input():
    oa, _, experts, _ = clients()
    done = oa.responses.create(model="auto", instructions="Be brief.",
                               input="solve the equation for x", max_output_tokens=6)  # fmt: skip

    assert done.status == "completed"
    assert done.output_text == "mathematician says: solve the equation for x"
    assert done.usage.input_tokens == 11
    sent = experts["mathematician"].requests[0]
    assert sent.messages[0] == {"role": "system", "content": "Be brief."}
    assert sent.max_tokens == 6


def test_responses_function_calls_and_their_outputs_round_trip():
    oa, _, experts, _ = clients(mathematician=FakeExpert("mathematician", "", tool_calls=[CALL],
                                                         finish_reason="tool_calls"))  # fmt: skip
    tool = {"type": "function", "name": "get_weather", "strict": True,
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"], "additionalProperties": False}}  # fmt: skip
    done = oa.responses.create(model="mathematician", input="weather in Oslo?", tools=[tool],
                               tool_choice={"type": "function", "name": "get_weather"})  # fmt: skip

    [call] = [o for o in done.output if o.type == "function_call"]
    assert (call.name, call.call_id, json.loads(call.arguments)) == ("get_weather", "call_7",
                                                                     {"city": "Oslo"})  # fmt: skip
    sent = experts["mathematician"].requests[0]
    assert sent.tool_choice == {"type": "function", "function": {"name": "get_weather"}}
    assert sent.tools[0]["function"]["parameters"] == tool["parameters"]

    oa.responses.create(model="mathematician", tools=[tool], input=[
        {"role": "user", "content": "weather in Oslo?"},
        {"type": "function_call", "call_id": "call_7", "name": "get_weather",
         "arguments": '{"city": "Oslo"}'},
        {"type": "function_call_output", "call_id": "call_7", "output": "sunny"},
    ])  # fmt: skip
    assert experts["mathematician"].requests[1].messages[1:] == [
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_7"},
    ]


def test_responses_stream_events_as_openai_sends_them():
    oa, *_ = clients()
    events = list(oa.responses.create(model="jurist", input="a contract", stream=True))

    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    for kind in ("response.output_item.added", "response.content_part.added",
                 "response.output_text.delta", "response.output_text.done",
                 "response.content_part.done", "response.output_item.done"):  # fmt: skip
        assert kind in kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "jurist says: a contract" == events[-1].response.output_text


def test_responses_stream_obfuscation_pads_deltas_unless_turned_off():
    oa, *_ = clients()
    deltas = [e for e in oa.responses.create(model="jurist", input="a contract", stream=True)
              if e.type == "response.output_text.delta"]  # fmt: skip
    pads = [e.obfuscation for e in deltas]
    assert all((len(e.delta) + len(pad)) % 32 == 0 and len(pad) >= 8
               for e, pad in zip(deltas, pads, strict=True))  # fmt: skip
    assert len(set(pads)) == len(pads)  # random, not a constant filler
    plain = [e for e in oa.responses.create(model="jurist", input="a contract", stream=True,
                                            stream_options={"include_obfuscation": False})
             if e.type == "response.output_text.delta"]  # fmt: skip
    assert plain and all(getattr(e, "obfuscation", None) is None for e in plain)


def test_responses_max_tool_calls_is_accepted_and_echoed():
    oa, *_ = clients()
    done = oa.responses.create(model="jurist", input="x", max_tool_calls=2)
    assert done.max_tool_calls == 2 and done.output_text


def test_responses_allowed_tools_become_the_experts_tools_and_choice():
    oa, _, experts, _ = clients()
    tools = [{"type": "function", "name": n, "parameters": {"type": "object"}} for n in "fg"]
    choice = {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "g"}]}
    done = oa.responses.create(model="jurist", input="x", tools=tools, tool_choice=choice)
    sent = experts["jurist"].requests[-1]
    assert [t["function"]["name"] for t in sent.tools] == ["g"] and sent.tool_choice == "auto"
    assert done.tool_choice.type == "allowed_tools"


def test_responses_json_schema_becomes_the_chat_response_format():
    oa, _, experts, _ = clients()
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    oa.responses.create(model="jurist", input="x", text={"format": {
        "type": "json_schema", "name": "thing", "schema": schema, "strict": True}})  # fmt: skip
    assert experts["jurist"].requests[0].response_format == {
        "type": "json_schema",
        "json_schema": {"name": "thing", "schema": schema, "strict": True},
    }


def test_responses_logprobs_when_included_stream_and_not():
    oa, _, experts, _ = clients(jurist=FakeExpert("jurist", "a b", words="leading", logprob=-0.25))
    done = oa.responses.create(model="jurist", input="x", include=["message.output_text.logprobs"],
                               top_logprobs=3)  # fmt: skip
    part = done.output[0].content[0]
    assert [(lp.token, lp.logprob) for lp in part.logprobs] == [("a", -0.25), (" b", -0.25)]
    sent = experts["jurist"].requests[0]
    assert sent.logprobs and sent.top_logprobs == 3
    assert done.top_logprobs == 3

    events = list(oa.responses.create(model="jurist", input="x", top_logprobs=0, stream=True))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert [[lp.token for lp in e.logprobs] for e in deltas] == [["a"], [" b"]]
    final = events[-1].response.output[0].content[0]
    assert [lp.token for lp in final.logprobs] == ["a", " b"]

    plain = oa.responses.create(model="jurist", input="x")
    assert plain.output[0].content[0].logprobs == []
    assert not experts["jurist"].requests[-1].logprobs


@pytest.mark.parametrize("body, param", [
    ({"store": True}, "store"), ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"tools": [{"type": "web_search"}]}, "tools"), ({"reasoning": {"effort": "low"}}, "reasoning"),
    ({"input": [{"type": "input_image", "image_url": "x"}]}, "input"),
    ({"tools": True}, "tools"), ({"tools": [None]}, "tools"),
    ({"include": ["file_search_call.results"]}, "include"), ({"top_logprobs": 21}, "top_logprobs"),
    ({"prompt_cache_key": "k"}, "prompt_cache_key"), ({"safety_identifier": "u"}, "safety_identifier"),
    ({"prompt_cache_retention": "24h"}, "prompt_cache_retention"), ({"max_tool_calls": 0}, "max_tool_calls"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
])  # fmt: skip
def test_responses_refuse_state_and_what_they_do_not_serve(body, param):
    *_, http = clients()
    r = http.post("/v1/responses", json={"model": "auto", "input": "x"} | body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


# -- /v1/messages (Anthropic) ---------------------------------------------------------------------


def test_messages_with_system_and_usage():
    _, an, experts, _ = clients()
    done = an.messages.create(model="auto", max_tokens=9, system="Be brief.",
                              messages=[{"role": "user", "content": "solve the equation for x"}])  # fmt: skip

    assert done.type == "message" and done.role == "assistant"
    assert done.content[0].text == "mathematician says: solve the equation for x"
    assert done.stop_reason == "end_turn" and done.usage.input_tokens == 11
    sent = experts["mathematician"].requests[0]
    assert sent.messages[0] == {"role": "system", "content": "Be brief."}
    assert sent.max_tokens == 9


def test_messages_report_the_stop_sequence_that_ended_the_answer():
    _, an, experts, _ = clients(jurist=FakeExpert("jurist", "a b", stop="END"))
    ask = {"model": "jurist", "max_tokens": 9, "messages": [{"role": "user", "content": "x"}]}
    done = an.messages.create(**ask, stop_sequences=["STOP", "END"])
    assert (done.stop_reason, done.stop_sequence) == ("stop_sequence", "END")
    assert experts["jurist"].requests[0].stop == ["STOP", "END"]
    with an.messages.stream(**ask, stop_sequences=["END"]) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "END")
    plain = an.messages.create(**ask)  # the expert's own stop, not the client's: end_turn
    assert (plain.stop_reason, plain.stop_sequence) == ("end_turn", None)


def test_messages_tool_use_and_tool_result():
    _, an, experts, _ = clients(jurist=FakeExpert("jurist", "", tool_calls=[CALL],
                                                  finish_reason="tool_calls"))  # fmt: skip
    tool = {"name": "get_weather", "input_schema": {"type": "object",
                                                    "properties": {"city": {"type": "string"}}}}  # fmt: skip
    done = an.messages.create(model="jurist", max_tokens=20, tools=[tool],
                              tool_choice={"type": "tool", "name": "get_weather"},
                              messages=[{"role": "user", "content": "weather?"}])  # fmt: skip
    [use] = [b for b in done.content if b.type == "tool_use"]
    assert (use.id, use.name, use.input) == ("call_7", "get_weather", {"city": "Oslo"})
    assert done.stop_reason == "tool_use"
    assert experts["jurist"].requests[0].tool_choice == {"type": "function",
                                                         "function": {"name": "get_weather"}}  # fmt: skip

    an.messages.create(model="jurist", max_tokens=20, tools=[tool], messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_7",
                                           "name": "get_weather", "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_7",
                                      "content": "sunny"}]},
    ])  # fmt: skip
    assert experts["jurist"].requests[1].messages[1:] == [
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_7"},
    ]


def test_messages_stream_with_the_anthropic_client():
    _, an, *_ = clients()
    with an.messages.stream(model="jurist", max_tokens=9,
                            messages=[{"role": "user", "content": "a contract"}]) as stream:  # fmt: skip
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "jurist says: a contract" == final.content[0].text
    assert final.stop_reason == "end_turn"

    raw = list(an.messages.create(model="jurist", max_tokens=9, stream=True,
                                  messages=[{"role": "user", "content": "x"}]))  # fmt: skip
    assert raw[0].type == "message_start" and raw[-1].type == "message_stop"


def test_messages_errors_come_in_anthropics_shape():
    _, an, _, http = clients()
    with pytest.raises(anthropic.BadRequestError) as err:
        an.messages.create(model="auto", max_tokens=5, extra_body={"thinking": {"type": "enabled"}},
                           messages=[{"role": "user", "content": "x"}])  # fmt: skip
    assert err.value.body["error"]["type"] == "invalid_request_error"
    assert "thinking" in err.value.body["error"]["message"]
    r = http.post("/v1/messages", json={"model": "nope", "max_tokens": 5,
                                        "messages": [{"role": "user", "content": "x"}]})  # fmt: skip
    assert r.status_code == 404 and r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "not_found_error"


def test_anthropic_service_tiers_that_ask_for_the_standard_one_pass():
    *_, http = clients()
    ask = {"model": "jurist", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    for tier in ("auto", "standard_only"):
        assert http.post("/v1/messages", json=ask | {"service_tier": tier}).status_code == 200
    r = http.post("/v1/messages", json=ask | {"service_tier": "priority"})
    assert r.status_code == 400 and "service_tier" in r.json()["error"]["message"]


def test_top_k_reaches_the_expert_from_anthropic_chat_and_completions():
    oa, an, experts, http = clients()
    ask = [{"role": "user", "content": "a contract"}]
    # top_k through extra_body: this anthropic client's create() has no such argument
    an.messages.create(model="jurist", max_tokens=5, messages=ask, extra_body={"top_k": 3})
    oa.chat.completions.create(model="jurist", max_tokens=5, messages=ask, extra_body={"top_k": 4})
    oa.completions.create(model="jurist", max_tokens=5, prompt="a contract",
                          extra_body={"top_k": 5})  # fmt: skip
    oa.chat.completions.create(model="jurist", max_tokens=5, messages=ask)
    assert [r.top_k for r in experts["jurist"].requests] == [3, 4, 5, None]
    r = http.post("/v1/messages", json={"model": "jurist", "max_tokens": 5, "top_k": -2,
                                        "messages": ask})  # fmt: skip
    assert r.status_code == 400 and "top_k" in r.json()["error"]["message"]


def test_a_final_assistant_message_is_a_prefill_the_answer_continues():
    _, an, experts, http = clients(counter=WordCounter())
    ask = [{"role": "user", "content": "a contract"}]
    an.messages.create(model="jurist", max_tokens=5, messages=[
        *ask, {"role": "assistant", "content": [{"type": "text", "text": "The deal"}]}])  # fmt: skip
    sent = experts["jurist"].requests[-1]
    assert sent.continue_final_message and sent.messages[-1] == {"role": "assistant",
                                                                 "content": "The deal"}  # fmt: skip
    assert sent.openai_params()["add_generation_prompt"] is False  # what a vLLM server needs
    an.messages.create(model="jurist", max_tokens=5, messages=[
        *ask, {"role": "assistant", "content": ""}])  # empty: asks nothing, dropped  # fmt: skip
    sent = experts["jurist"].requests[-1]
    assert not sent.continue_final_message and sent.messages == ask
    assert an.messages.count_tokens(model="jurist", messages=[
        *ask, {"role": "assistant", "content": "The deal"}]).input_tokens == 40  # fmt: skip
    r = http.post("/v1/messages", json={"model": "jurist", "max_tokens": 5, "messages": [
        *ask, {"role": "assistant", "content": "The deal "}]})  # fmt: skip
    assert r.status_code == 400 and "trailing whitespace" in r.json()["error"]["message"]


def test_count_tokens_counts_for_the_expert_that_would_answer():
    _, an, experts, http = clients(counter=WordCounter())
    count = an.messages.count_tokens(model="auto", system="Be brief.", messages=[
        {"role": "user", "content": "solve the equation for x"}])  # fmt: skip
    assert count.input_tokens == 10 * (2 + 5)  # the system text counts too (WordCounter)
    r = http.post("/v1/messages/count_tokens", json={
        "model": "jurist", "messages": [{"role": "user", "content": "a contract"}]})  # fmt: skip
    assert r.json() == {"input_tokens": 20, "quorum": {
        "expert": "jurist", "input_tokens_by_expert": {"jurist": 20}}}  # fmt: skip
    assert all(not e.requests for e in experts.values() if hasattr(e, "requests"))  # nothing ran


def test_count_tokens_refusals_in_anthropics_shape():
    _, an, _, http = clients(counter=WordCounter())
    ask = [{"role": "user", "content": "x"}]
    with pytest.raises(anthropic.BadRequestError, match="thinking"):
        an.messages.count_tokens(model="auto", messages=ask,
                                 thinking={"type": "enabled", "budget_tokens": 1024})  # fmt: skip
    r = http.post("/v1/messages/count_tokens", json={"model": "auto", "messages": ask,
                                                     "max_tokens": 5})  # fmt: skip
    assert r.status_code == 400 and r.json()["type"] == "error"
    r = http.post("/v1/messages/count_tokens", json={"model": "nope", "messages": ask})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    _, _, _, uncounted = clients()  # no tokenizer for any expert
    r = uncounted.post("/v1/messages/count_tokens", json={"model": "jurist", "messages": ask})
    assert r.status_code == 400 and "cannot be counted in expert 'jurist'" in r.json()["error"][
        "message"]  # fmt: skip


def test_refusals_name_the_parameter_as_each_api_spells_it():
    *_, http = clients()
    r = http.post("/v1/responses", json={"model": "auto", "input": "x", "max_output_tokens": 10**6})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_output_tokens"
    assert "'max_output_tokens'" in r.json()["error"]["message"]
    r = http.post("/v1/messages", json={"model": "auto", "max_tokens": 5, "stop_sequences": list(
        "abcde"), "messages": [{"role": "user", "content": "x"}]})  # fmt: skip
    assert r.status_code == 400 and "stop_sequences" in r.json()["error"]["message"]


# -- /v1/models through both clients -----------------------------------------------------------


def test_models_read_by_the_anthropic_client_and_paged():
    oa, an, _, http = clients()
    every = [m.id for m in oa.models.list()]
    assert every == ["auto", "mathematician", "jurist", "flaky", "slow"]
    rows = list(an.models.list())
    assert [m.id for m in rows] == every
    assert {m.type for m in rows} == {"model"} and rows[1].display_name == "mathematician"
    assert rows[0].created_at is not None
    paged = list(an.models.list(limit=2))  # the client follows has_more / last_id
    assert [m.id for m in paged] == every
    first = an.models.list(limit=2)
    assert first.has_more and [m.id for m in first.data] == ["auto", "mathematician"]
    before = http.get("/v1/models", params={"before_id": "flaky", "limit": 2}).json()
    assert [m["id"] for m in before["data"]] == ["mathematician", "jurist"] and before["has_more"]
    between = http.get("/v1/models", params={"after_id": "auto", "before_id": "slow"}).json()
    assert [m["id"] for m in between["data"]] == ["mathematician", "jurist", "flaky"]
    assert an.models.retrieve("jurist").display_name == "jurist"
    for params, param in (({"after_id": "gpt-9"}, "after_id"), ({"limit": 0}, "limit"),
                          ({"limit": "x"}, "limit")):  # fmt: skip
        r = http.get("/v1/models", params=params)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
