"""The real service: `quorum serve` (Ray Serve + vLLM CPU engines on the two tiny models),
called with the official `openai` client, unchanged."""

import httpx
import openai
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(quorum_default):
    base, _ = quorum_default
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", timeout=300, max_retries=0)


def test_models_lists_router_and_experts(client):
    ids = {m.id for m in client.models.list().data}
    assert {"auto", "smollm2-135m", "gemma3-270m"} <= ids


def test_auto_routes_and_generates(client):
    completion = client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "Solve 3x+5=11 for x."}],
        max_tokens=24,
        temperature=0,
    )
    text = completion.choices[0].message.content
    assert isinstance(text, str) and text.strip()
    assert completion.choices[0].finish_reason in {"stop", "length"}
    assert completion.usage.completion_tokens > 0 and completion.usage.prompt_tokens > 0
    routing = completion.model_extra["quorum"]["routing"]
    assert routing["skills"][0]["skill"] == "math"
    assert routing["experts"][0] == completion.model
    assert completion.model in {"smollm2-135m", "gemma3-270m"}


def test_streaming_yields_deltas_and_the_decision(client):
    stream = client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "Name three planets."}],
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1
    assert chunks[0].model_extra["quorum"]["routing"]["experts"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_streamed_and_whole_answers_match_at_temperature_zero(client):
    kwargs = dict(model="smollm2-135m", max_tokens=16, temperature=0,
                  messages=[{"role": "user", "content": "What is the capital of France?"}])  # fmt: skip
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(stream=True, **kwargs)
        if c.choices
    )
    assert whole == streamed


def test_gemma_base_model_answers_directly(client):
    completion = client.chat.completions.create(
        model="gemma3-270m", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
    )
    assert completion.model == "gemma3-270m" and completion.choices[0].message.content is not None


def test_errors_are_openai_shaped_and_service_keeps_serving(client, quorum_default):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])
    assert "available models" in info.value.message
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="auto", messages=[])
    base, _ = quorum_default
    r = httpx.post(f"{base}/v1/chat/completions", content=b"{oops", timeout=30)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    too_long = "word " * 5000
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="smollm2-135m", messages=[{"role": "user", "content": too_long}]
        )
    # Eligibility counts the prompt in the expert's own tokens before dispatch (issue 14): the
    # named expert cannot serve it, and the 400 says how long it is and what the context holds.
    assert info.value.code == "no_eligible_expert"
    assert "of its tokens" in info.value.message and "context holds" in info.value.message
    ok = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert ok.choices[0].message.content is not None
