"""Quorum's MoE layer inside vLLM (the `vllm.general_plugins` entry point `quorum_moe`).

Tiny random Mixtral and Qwen3-MoE models, each served by vLLM's CPU build twice: on vLLM's own
MoE kernels and with moe_kernels="quorum" (Quorum's Triton layer, run by Triton's interpreter on
CPU tensors). Greedy answers must be the same text, and the counter read from the engine process
(collective_rpc through the plugin's worker extension) must show Quorum's layer ran there for
every MoE layer, and not at all in the vLLM-kernel run.

Needs the entry point installed (`pip install -e .` after pulling this change): without it vLLM
never loads the plugin and the layer count below is 0.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from experts.engine import VLLMEngine, vllm_available
from tests.integration.tiny_moe import NUM_LAYERS, write_tiny_moe

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not vllm_available(), reason='vLLM is not installed: pip install "quorum[cpu]"'
    ),
]

PROMPTS = ["What is the capital of France?", "Name three colours.", "Write a haiku about rain."]
MAX_TOKENS = 12
# A small scheduler budget bounds the interpreter's largest batch (vLLM's dummy runs use it).
ENGINE_ARGS = {"max_num_batched_tokens": 256, "max_num_seqs": 8,
               "worker_extension_cls": "experts.moe.vllm_plugin.QuorumWorkerExtension"}  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def plugin_installed() -> None:
    """vLLM finds plugins through package metadata, not through sys.path."""
    from importlib.metadata import entry_points

    names = {e.name for e in entry_points(group="vllm.general_plugins")}
    if "quorum_moe" not in names:
        pytest.fail(
            "the vllm.general_plugins entry point quorum_moe is not installed: pip install -e ."
        )


@pytest.fixture(scope="module")
def tokenizer_dir() -> Path:
    from experts.models import prepare_builtin_models, resolve_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    prepare_builtin_models(["smollm2-135m-instruct"])
    return Path(resolve_model("builtin:smollm2-135m-instruct"))


@pytest.fixture(scope="module")
def interpret() -> Iterator[None]:
    """Triton's interpreter in the engine processes vLLM starts from here (they inherit it)."""
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    yield
    if old is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = old


_VLLM_ANSWERS: dict[str, list[str]] = {}  # kind -> greedy answers on vLLM's kernels


async def _serve(model: Path, moe_kernels: str) -> tuple[list[str], dict]:
    engine = await VLLMEngine.create(str(model), max_model_len=512, engine_kwargs=ENGINE_ARGS,
                                     moe_kernels=moe_kernels)  # fmt: skip
    try:
        answers = await asyncio.gather(*(
            engine.chat([{"role": "user", "content": p}], max_tokens=MAX_TOKENS, temperature=0.0,
                        top_p=1.0, stop=None, seed=0, request_id=f"{moe_kernels}-{i}")
            for i, p in enumerate(PROMPTS)
        ))  # fmt: skip
        return [a.text for a in answers], await engine.moe_kernel_stats()
    finally:
        engine.shutdown()


@pytest.mark.parametrize("kind", ["mixtral", "qwen3_moe"])
def test_quorum_moe_layer_gives_vllm_greedy_answers(kind, tokenizer_dir, interpret, tmp_path):
    model = write_tiny_moe(kind, tmp_path / kind, tokenizer_dir)

    want, vllm_stats = asyncio.run(_serve(model, "vllm"))
    _VLLM_ANSWERS[kind] = want
    got, quorum_stats = asyncio.run(_serve(model, "quorum"))

    print(f"{kind}: vllm {vllm_stats} {want}\n{kind}: quorum {quorum_stats} {got}")
    assert vllm_stats == {"calls": 0, "layers": 0, "fallbacks": {}}
    assert quorum_stats["layers"] == NUM_LAYERS, quorum_stats
    assert quorum_stats["fallbacks"] == {}, quorum_stats
    # Every forward step runs each MoE layer once: at least one prefill and MAX_TOKENS - 1 decodes.
    assert quorum_stats["calls"] >= NUM_LAYERS * MAX_TOKENS, quorum_stats
    assert all(a.strip() for a in want), want
    assert got == want


def test_a_layer_the_plugin_cannot_run_stays_on_vllms_kernels(tokenizer_dir, tmp_path):
    """Opted in, but on a CPU without TRITON_INTERPRET: every MoE layer falls back, once logged."""
    model = write_tiny_moe("mixtral", tmp_path / "mixtral", tokenizer_dir)
    old = os.environ.pop("TRITON_INTERPRET", None)
    try:
        got, stats = asyncio.run(_serve(model, "quorum"))
    finally:
        if old is not None:
            os.environ["TRITON_INTERPRET"] = old
    print(f"fallback: {stats} {got}")
    reason = "CPU weights without TRITON_INTERPRET=1 (Triton compiles for GPUs only)"
    assert stats == {"calls": 0, "layers": 0, "fallbacks": {reason: NUM_LAYERS}}
    assert all(a.strip() for a in got), got
    if "mixtral" in _VLLM_ANSWERS:  # same weights (seed 0) as the comparison above
        assert got == _VLLM_ANSWERS["mixtral"]
