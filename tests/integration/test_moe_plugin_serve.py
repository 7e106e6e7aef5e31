"""`quorum serve` with a hosted MoE expert on Quorum's MoE kernels (`moe_kernels: quorum`), asked
with the official `openai` client next to the same model on vLLM's kernels.

The tiny random Qwen3-MoE model (tests/integration/tiny_moe.py) is registered twice: `moe-quorum`
runs its MoE layers through the vLLM plugin (Triton's interpreter on the CPU), `moe-vllm` on
vLLM's own CPU kernels. Greedy answers must match, plain and streamed. That the plugin's layer
ran inside such an engine is shown by tests/integration/test_moe_plugin.py (its counter, read
from the engine process); here the serve log must also carry the plugin's one activation line.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import openai
import pytest

from tests.integration.conftest import free_port, start_quorum, stop
from tests.integration.tiny_moe import write_tiny_moe

pytestmark = pytest.mark.integration

REGISTRY = """
router: {{classifier: {{kind: logreg, artifact: builtin}}}}
experts:
  - name: moe-vllm
    model: {model}
    resources: {{cpus: 1}}
    context_length: 512
    engine_args: {{max_num_batched_tokens: 256, max_num_seqs: 4}}
    env: {{TRITON_INTERPRET: "1"}}
    timeout_s: 900
  - name: moe-quorum
    model: {model}
    moe_kernels: quorum
    resources: {{cpus: 1}}
    context_length: 512
    engine_args: {{max_num_batched_tokens: 256, max_num_seqs: 4}}
    env: {{TRITON_INTERPRET: "1"}}
    timeout_s: 900
"""
QUESTIONS = ["What is the capital of France?", "Name a fruit."]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'quorum[cpu]')")
    from importlib.metadata import entry_points

    if "quorum_moe" not in {e.name for e in entry_points(group="vllm.general_plugins")}:
        pytest.fail(
            "the vllm.general_plugins entry point quorum_moe is not installed: pip install -e ."
        )
    from experts.models import prepare_builtin_models, resolve_model

    prepare_builtin_models(["smollm2-135m-instruct"])
    root = tmp_path_factory.mktemp("moe-serve")
    model = write_tiny_moe(
        "qwen3_moe", root / "tiny-qwen3-moe", Path(resolve_model("builtin:smollm2-135m-instruct"))
    )
    registry = root / "registry.yaml"
    registry.write_text(REGISTRY.format(model=model))
    port = free_port()
    proc, log = start_quorum(port, "--registry", str(registry))
    yield f"http://127.0.0.1:{port}", log
    stop(proc)


def test_quorum_kernels_answer_like_vllm_kernels_through_quorum_serve(served):
    url, log = served
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", timeout=900, max_retries=0)

    async def ask(model: str, question: str, stream: bool) -> str:
        kwargs = dict(model=model, max_tokens=10, temperature=0,
                      messages=[{"role": "user", "content": question}])  # fmt: skip
        if stream:
            chunks = [c async for c in await client.chat.completions.create(**kwargs, stream=True)]
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return (await client.chat.completions.create(**kwargs)).choices[0].message.content

    async def scenario() -> tuple[list[str], list[str]]:
        asks = [(q, s) for q in QUESTIONS for s in (False, True)]
        vllm = await asyncio.gather(*(ask("moe-vllm", q, s) for q, s in asks))
        quorum = await asyncio.gather(*(ask("moe-quorum", q, s) for q, s in asks))
        return vllm, quorum

    want, got = asyncio.run(scenario())
    assert all(a.strip() for a in want), want
    assert got == want
    assert "Quorum MoE kernels:" in log.read_text()
    assert "runs Quorum's Triton layer" in log.read_text()
