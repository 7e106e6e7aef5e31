"""The whole OpenAI surface on the real service (`quorum serve`, both tiny models on vLLM CPU):
structured output, tool calls, logprobs through chat; /v1/completions, /v1/responses and
Anthropic's /v1/messages (and count_tokens) with the official clients, streaming and not; /livez,
/readyz and the per-expert readiness in /v1/models; an unsupported parameter is a 400 and serving
goes on."""

from __future__ import annotations

import json
import time

import anthropic
import httpx
import jsonschema
import openai
import pytest

pytestmark = pytest.mark.integration

ASK = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "additionalProperties": False}}}  # fmt: skip


@pytest.fixture(scope="module")
def base(quorum_default):
    return quorum_default[0]


@pytest.fixture(scope="module")
def oa(base):
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", timeout=300, max_retries=0)


@pytest.fixture(scope="module")
def an(base):
    return anthropic.Anthropic(base_url=base, api_key="unused", timeout=300, max_retries=0)


def test_live_ready_and_models_show_each_expert_ready(base):
    assert httpx.get(f"{base}/livez").status_code == 200
    # Serve reported every deployment running; the ingress polls Serve every poll_s (2 s)
    deadline = time.monotonic() + 10
    while (ready := httpx.get(f"{base}/readyz")).status_code != 200 and time.monotonic() < deadline:
        assert ready.headers["retry-after"] and ready.json()["status"] == "not_ready"
        time.sleep(0.5)
    assert ready.status_code == 200, ready.text
    assert {e["state"] for e in ready.json()["experts"].values()} == {"ready"}
    rows = {m["id"]: m["quorum"] for m in httpx.get(f"{base}/v1/models").json()["data"]}
    assert rows["smollm2-135m"]["readiness"]["state"] == "ready"


def test_models_retrieve_with_the_official_client(oa):
    assert oa.models.retrieve("gemma3-270m").quorum["capabilities"]["tool_parser"] == "hermes"
    with pytest.raises(openai.NotFoundError, match="available models"):
        oa.models.retrieve("gpt-9")


def test_chat_json_schema_output_validates(oa):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
              "required": ["city"], "additionalProperties": False}  # fmt: skip
    done = oa.chat.completions.create(
        model="auto", messages=ASK, max_tokens=48, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    )  # fmt: skip
    jsonschema.validate(json.loads(done.choices[0].message.content), schema)


def test_chat_required_tool_choice_returns_a_call(oa):
    done = oa.chat.completions.create(
        model="gemma3-270m", messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[WEATHER], tool_choice="required", max_tokens=64, temperature=0,
    )  # fmt: skip
    [call] = done.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments),
                        WEATHER["function"]["parameters"])  # fmt: skip
    assert done.choices[0].finish_reason == "tool_calls"


def test_allowed_tools_restrict_the_call_to_them(oa):
    clock = {"type": "function", "function": {
        "name": "get_time", "strict": True,
        # an enum: with a free string gemma3 fills the zone with digits up to max_tokens
        "parameters": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}},
                       "required": ["zone"], "additionalProperties": False}}}  # fmt: skip
    only_clock = {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
        {"type": "function", "function": {"name": "get_time"}}]}}  # fmt: skip
    done = oa.chat.completions.create(
        model="gemma3-270m", messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[WEATHER, clock], tool_choice=only_clock, max_tokens=64, temperature=0,
    )  # fmt: skip
    assert [c.function.name for c in done.choices[0].message.tool_calls] == ["get_time"]


@pytest.mark.parametrize("model", ["gemma3-270m", "smollm2-135m"])
def test_tool_arguments_follow_the_schema_without_strict(oa, model):
    # The built-in experts set capabilities.tool_strict_level: parameter. Without it (vLLM's
    # `auto`), a tool without `strict: true` gets any JSON value as arguments: smollm2 answered
    # '"Paris"' and gemma3 an array that ran to max_tokens, with no call at all.
    loose = {"type": "function", "function": {k: v for k, v in WEATHER["function"].items()
                                              if k != "strict"}}  # fmt: skip
    done = oa.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[loose], tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=64, temperature=0,
    )  # fmt: skip
    [call] = done.choices[0].message.tool_calls
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])


@pytest.mark.parametrize("model", ["smollm2-135m", "gemma3-270m"])
def test_a_conversation_with_a_tool_result_is_answered_and_counted(oa, an, model):
    # Neither template renders tool calls: SmolLM2's failed on the call's null content (a 500),
    # and the plain template dropped the tool's result. Now the call is hermes text in the
    # assistant turn, and the count before routing is what the answer bills.
    call = {"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}  # fmt: skip
    messages = [{"role": "user", "content": "What is the weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny, 20 C"}]  # fmt: skip
    done = oa.chat.completions.create(model=model, messages=messages, tools=[WEATHER],
                                      max_tokens=8, temperature=0)  # fmt: skip
    assert done.choices[0].finish_reason in ("stop", "length", "tool_calls")
    blocks = [{"role": "user", "content": "What is the weather in Paris?"},
              {"role": "assistant", "content": [{"type": "tool_use", "id": "c1",
                                                 "name": "get_weather", "input": {"city": "Paris"}}]},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1",
                                            "content": "sunny, 20 C"}]}]  # fmt: skip
    tool = {"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}
    billed = an.messages.create(model=model, max_tokens=1, messages=blocks, tools=[tool])
    counted = an.messages.count_tokens(model=model, messages=blocks, tools=[tool])
    assert counted.input_tokens == billed.usage.input_tokens == done.usage.prompt_tokens


def test_chat_logprobs_stream_and_not(oa):
    done = oa.chat.completions.create(model="smollm2-135m", messages=ASK, max_tokens=6,
                                      temperature=0, logprobs=True, top_logprobs=2)  # fmt: skip
    entries = done.choices[0].logprobs.content
    assert len(entries) == done.usage.completion_tokens
    assert all(len(e.top_logprobs) == 2 and e.logprob <= 0 for e in entries)
    streamed = [e for c in oa.chat.completions.create(
        model="smollm2-135m", messages=ASK, max_tokens=6, temperature=0, logprobs=True,
        stream=True) for ch in c.choices if ch.logprobs for e in ch.logprobs.content or []]  # fmt: skip
    assert [e.token for e in streamed] == [e.token for e in entries]


def test_legacy_completions_stream_and_not(oa):
    done = oa.completions.create(model="smollm2-135m", prompt="The capital of France is",
                                 max_tokens=8, temperature=0)  # fmt: skip
    assert done.choices[0].text.strip() and done.usage.completion_tokens > 0
    pieces = list(oa.completions.create(model="smollm2-135m", prompt="The capital of France is",
                                        max_tokens=8, temperature=0, stream=True))  # fmt: skip
    assert "".join(c.text for p in pieces for c in p.choices) == done.choices[0].text


def test_responses_stream_and_not(oa):
    done = oa.responses.create(model="smollm2-135m", instructions="Answer briefly.", input=ASK,
                               max_output_tokens=12, temperature=0)  # fmt: skip
    assert done.status in ("completed", "incomplete") and done.output_text.strip()
    events = list(oa.responses.create(model="smollm2-135m", instructions="Answer briefly.",
                                      input=ASK, max_output_tokens=12, temperature=0,
                                      stream=True))  # fmt: skip
    assert events[0].type == "response.created"
    assert events[-1].type in ("response.completed", "response.incomplete")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == events[-1].response.output_text == done.output_text


def test_responses_logprobs(oa):
    done = oa.responses.create(model="smollm2-135m", input=ASK, max_output_tokens=6,
                               temperature=0, include=["message.output_text.logprobs"],
                               top_logprobs=2)  # fmt: skip
    lps = done.output[0].content[0].logprobs
    assert "".join(lp.token for lp in lps) == done.output_text
    assert all(lp.logprob <= 0 and len(lp.top_logprobs) == 2 for lp in lps)


def test_anthropic_messages_stream_and_not(an):
    # temperature through extra_body: this anthropic client's create() has no such argument
    greedy = {"extra_body": {"temperature": 0}}
    done = an.messages.create(model="smollm2-135m", max_tokens=12, system="Answer briefly.",
                              messages=ASK, **greedy)  # fmt: skip
    assert done.content[0].text.strip() and done.usage.output_tokens > 0
    with an.messages.stream(model="smollm2-135m", max_tokens=12, system="Answer briefly.",
                            messages=ASK, **greedy) as stream:  # fmt: skip
        text = "".join(stream.text_stream)
    assert text == done.content[0].text
    # count_tokens: the same prompt, counted before generating, is what the engine billed
    for model in ("smollm2-135m", "gemma3-270m"):
        done = an.messages.create(model=model, max_tokens=1, system="Answer briefly.",
                                  messages=ASK)  # fmt: skip
        count = an.messages.count_tokens(model=model, system="Answer briefly.", messages=ASK)
        assert count.input_tokens == done.usage.input_tokens > 5, model


def test_anthropic_stop_sequence_is_reported(an):
    # Both tiny experts answer this question in words: a space comes well before 12 tokens.
    greedy = {"extra_body": {"temperature": 0}}
    for model in ("smollm2-135m", "gemma3-270m"):
        done = an.messages.create(model=model, max_tokens=12, messages=ASK,
                                  stop_sequences=["@@", " "], **greedy)  # fmt: skip
        assert (done.stop_reason, done.stop_sequence) == ("stop_sequence", " "), (model, done)
        text = "".join(block.text for block in done.content)
        assert " " not in text, text  # vLLM ends the text before the stop string
        with an.messages.stream(model=model, max_tokens=12, messages=ASK, stop_sequences=[" "],
                                **greedy) as stream:  # fmt: skip
            final = stream.get_final_message()
        assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", " "), model


def test_chat_n_choices_are_seeded_apart_and_repeatable(oa):
    poem = [{"role": "user", "content": "Write a short poem about the sea."}]
    ask = {"model": "smollm2-135m", "messages": poem, "max_tokens": 12, "temperature": 1.0}
    two = oa.chat.completions.create(**ask, n=2, seed=11)
    again = oa.chat.completions.create(**ask, n=2, seed=11)
    texts = [c.message.content for c in two.choices]
    assert [c.index for c in two.choices] == [0, 1] and texts[0] != texts[1]
    assert [c.message.content for c in again.choices] == texts
    assert oa.chat.completions.create(**ask, seed=12).choices[0].message.content == texts[1]


def test_anthropic_top_k_one_answers_as_greedy(an):
    poem = [{"role": "user", "content": "Write a short poem about the sea."}]
    greedy = an.messages.create(model="smollm2-135m", max_tokens=16, messages=poem,
                                extra_body={"temperature": 0})  # fmt: skip
    hot = an.messages.create(model="smollm2-135m", max_tokens=16, messages=poem,
                             extra_body={"temperature": 1, "top_k": 1})  # fmt: skip
    assert hot.content[0].text == greedy.content[0].text


def test_anthropic_prefill_is_continued_not_answered_anew(an):
    greedy = {"extra_body": {"temperature": 0}}
    for model in ("smollm2-135m", "gemma3-270m"):
        whole = an.messages.create(model=model, max_tokens=16, messages=ASK, **greedy)
        text = whole.content[0].text
        prefix = " ".join(text.split(" ")[:3])
        assert len(prefix) < len(text), (model, text)
        rest = an.messages.create(model=model, max_tokens=16, **greedy, messages=[
            *ASK, {"role": "assistant", "content": prefix}])  # fmt: skip
        assert (prefix + rest.content[0].text).startswith(text), (model, prefix, rest, text)


def test_an_unsupported_parameter_is_a_400_and_serving_goes_on(oa):
    with pytest.raises(openai.BadRequestError) as err:
        oa.chat.completions.create(model="auto", messages=ASK, max_tokens=4,
                                   extra_body={"audio": {"voice": "alloy"}})  # fmt: skip
    assert err.value.body["param"] == "audio"
    assert oa.chat.completions.create(model="auto", messages=ASK, max_tokens=4).choices
