"""`quorum serve` with `residency`: two hosted experts share one slot of the expert pool
deployment (Ray Serve + vLLM CPU), batch by expert, called with the official `openai` client."""

import asyncio

import httpx
import openai
import pytest

from tests.integration.conftest import free_port, start_quorum, stop

pytestmark = pytest.mark.integration

REGISTRY = """
router: {classifier: {kind: logreg, artifact: builtin}}
residency: {slots: 1, policy: batch, max_batch_wait_s: 0.5, swap_cost_s: 40, max_wait_s: 900}
experts:
"""
EXPERT = """
  - name: {name}
    model: builtin:smollm2-135m-instruct
    resources: {{cpus: 1}}
    context_length: 1024
    engine_args: {{enforce_eager: true}}
    timeout_s: 900
"""


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'quorum[cpu]')")
    path = tmp_path_factory.mktemp("residency") / "registry.yaml"
    path.write_text(REGISTRY + "".join(EXPERT.format(name=n) for n in ("smol-a", "smol-b")))
    port = free_port()
    proc, _log = start_quorum(port, "--registry", str(path))
    yield f"http://127.0.0.1:{port}"
    stop(proc)


def test_two_experts_share_one_slot_batch_by_expert(pool):
    client = openai.AsyncOpenAI(base_url=f"{pool}/v1", api_key="unused", timeout=900,
                                max_retries=0)  # fmt: skip

    async def ask(model: str, question: str, stream: bool = False) -> str:
        kwargs = dict(model=model, max_tokens=8, temperature=0,
                      messages=[{"role": "user", "content": question}])  # fmt: skip
        if stream:
            chunks = [c async for c in await client.chat.completions.create(**kwargs, stream=True)]
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return (await client.chat.completions.create(**kwargs)).choices[0].message.content

    async def scenario() -> list[str]:
        first = await ask("smol-a", "Name a colour.")  # loads smol-a into the only slot
        # Three at once: smol-b's two share one batch after its swap; smol-a's is served before
        # (it is resident) or after (if smol-b's requests came first and the idle smol-a left).
        rest = await asyncio.gather(ask("smol-b", "Name a fruit."), ask("smol-b", "Name a city."),
                                    ask("smol-a", "Name an animal.", stream=True))  # fmt: skip
        return [first, *rest]

    answers = asyncio.run(scenario())
    assert all(a.strip() for a in answers), answers
    state = httpx.get(f"{pool}/admin/scheduler", timeout=30).json()
    assert state["policy"] == "batch"
    assert {n: e["queued"] for n, e in state["experts"].items()} == {"smol-a": 0, "smol-b": 0}
    assert sum(e["resident"] for e in state["experts"].values()) == 1  # one slot
    assert 2 <= state["swaps"] <= 3  # a, b (and a again when it had left while idle)
    assert state["batches"] == 3  # 4 requests: smol-b's two in one batch
