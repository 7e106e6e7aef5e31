"""A thin async wrapper over one vLLM engine (`AsyncLLM`): chat messages in, text deltas out.

Independent of Ray: a Serve deployment holds one `VLLMEngine`, a test or script can hold one too.

    engine = VLLMEngine("/path/to/hf-folder", max_model_len=1024)   # blocking, see below
    async for d in engine.stream_chat(messages, max_tokens=64, temperature=0.0, top_p=1.0,
                                      stop=None, seed=0, request_id="r1"):
        print(d.text, end="")          # the last delta has finish_reason and the token counts
    engine.shutdown()

vLLM is imported lazily, so `import experts.engine` works on a machine without it; building an
engine there raises `ImportError` naming the install command.

Sleep mode: vLLM's CPU build refuses `enable_sleep_mode` ("not supported on current platform") and
its CPU worker turns `sleep()`/`wake_up()` into no-ops that free no memory, so `supports_sleep` is
False there and `sleep()` raises `SleepNotSupportedError`. On CUDA/ROCm it is True when the engine
was built with `engine_kwargs={"enable_sleep_mode": True}`.

Measured on 2 shared CPU cores (load average 4-10 from other jobs; `python -m benchmarks.engine_start`):
SmolLM2-135M starts in 35-60 s when the machine is calm, up to ~115 s when it is not (Gemma-3-270M
about the same or up to 2x); a 20-token answer takes 3.4-5 s, of which 1.5-1.9 s before the first
text. On CPU, AsyncLLM.sleep(1) + wake_up() return in ~10 ms but free nothing (RSS 3549 -> 3549
MB), while shutdown() takes 5 s (vLLM's SIGTERM grace period) plus 35-62 s to start again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from experts.errors import ContextLengthExceededError
from experts.models import read_model_meta
from experts.moe.vllm_plugin import engine_kwargs as moe_engine_kwargs
from experts.stream import Delta, ExpertRequest, matched_stop

__all__ = [
    "SleepNotSupportedError",
    "VLLMEngine",
    "cpu_has_native_bf16",
    "platform_supports_sleep",
    "vllm_available",
]

logger = logging.getLogger(__name__)

_INSTALL_HINT = (
    'pip install "quorum[cpu]" (vLLM\'s CPU build; on GPU machines: pip install "quorum[gpu]")'
)
_GiB = 1 << 30
# On the CPU: no CUDA graphs to capture; an explicit KV-cache size (1 GiB holds 46k tokens of
# SmolLM2) bounds memory on a shared machine and lets vLLM skip its warm-up pass; the "uni"
# executor runs the model inside the engine-core process instead of spawning one more process that
# imports torch again (SmolLM2 engine restart on 2 shared cores: 34.6 s vs 42.5 s with "mp").
_CPU_DEFAULTS: dict[str, Any] = {
    "enforce_eager": True,
    "kv_cache_memory_bytes": 1 * _GiB,
    "distributed_executor_backend": "uni",
}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (x86 avx512_bf16 / amx_bf16, Arm bf16).

    Without it vLLM's CPU build emulates bf16, and float32 is much faster: SmolLM2-135M on this
    project's 2-core AVX2 machine, 8 MMLU-Pro prompts (1,666 tokens) with 16 new tokens each,
    took 76.5 s in bf16 and 14.4 s in float32; one prompt 10.5 s vs 3.2 s.
    """
    try:
        with open("/proc/cpuinfo") as fh:
            flags = set(fh.read().split())
    except OSError:
        return True  # unknown: keep the model's own dtype
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


class SleepNotSupportedError(RuntimeError):
    """This engine cannot sleep (the platform lacks it, or enable_sleep_mode was not set)."""


def vllm_available() -> bool:
    """Whether vLLM can be imported here (without importing it when it is absent)."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def _import_vllm() -> Any:
    try:
        import vllm
        from vllm.engine.arg_utils import AsyncEngineArgs  # noqa: F401
        from vllm.v1.engine.async_llm import AsyncLLM  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"experts.engine needs vLLM, which failed to import ({e}); "
            f"install it with `{_INSTALL_HINT}`"
        ) from e
    return vllm


def platform_supports_sleep() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_sleep_mode_available())


class VLLMEngine:
    """One vLLM `AsyncLLM` serving one model.

    The constructor is synchronous and blocks until the model is loaded (vLLM's own
    `AsyncLLM.from_engine_args` is synchronous), so it fits a sync Ray Serve deployment
    constructor; `await VLLMEngine.create(...)` builds it from async code without blocking the
    loop. `model` is an HF folder or hub id (resolve `builtin:` specs with
    `experts.models.resolve_model` first). `engine_kwargs` go to `AsyncEngineArgs`; on the CPU the
    defaults are eager mode, a 1 GiB KV cache and the in-process ("uni") executor. If the folder
    was prepared by `experts.models`, its default stop strings apply to every request.
    """

    def __init__(
        self,
        model: str,
        *,
        max_model_len: int = 2048,
        engine_kwargs: dict[str, Any] | None = None,
        name: str | None = None,
        moe_kernels: str = "vllm",
        tool_parser: str | None = None,
        tool_strict_level: str = "auto",
    ) -> None:
        _import_vllm()
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        kwargs: dict[str, Any] = moe_engine_kwargs(moe_kernels, dict(engine_kwargs or {}))
        if current_platform.is_cpu():
            for key, value in _CPU_DEFAULTS.items():
                kwargs.setdefault(key, value)
            if kwargs.get("dtype", "auto") == "auto":
                # float32 on every CPU. Without native bf16 vLLM emulates it, 3-5x slower (see
                # cpu_has_native_bf16). With it (an AMX Xeon, 2026-11-30), greedy SmolLM2-135M
                # answered "What is the capital of France?" with "L'Étoile, la Marseillaise, ..."
                # in bf16 and "The capital of France is Paris." in float32: the tiny models lose
                # their answers to bf16 rounding. `engine_args.dtype` still forces either.
                kwargs["dtype"] = "float32"
                logger.info("CPU engine: float32 weights (native bf16 here: %s)",
                            cpu_has_native_bf16())  # fmt: skip
        if kwargs.get("enable_sleep_mode") and not platform_supports_sleep():
            raise SleepNotSupportedError(
                f"enable_sleep_mode=True was requested but vLLM's {current_platform.device_name} "
                "platform has no sleep mode; drop it from engine_kwargs"
            )
        kwargs.setdefault("disable_log_stats", True)
        self.model = model
        self.name = f"expert '{name}'" if name else "this model"  # for error messages
        self.max_model_len = max_model_len
        self.tool_parser = tool_parser  # vLLM tool parser name; None: no tool calling
        self.tool_strict_level = tool_strict_level  # vLLM's --tool-strict-level
        self._sleep_enabled = bool(kwargs.get("enable_sleep_mode"))
        self._sleeping = False
        meta = read_model_meta(model) if _is_local_dir(model) else None
        self.default_stop: list[str] = list((meta or {}).get("default_stop") or [])

        started = time.perf_counter()
        args = AsyncEngineArgs(model=model, max_model_len=max_model_len, **kwargs)
        self._llm = AsyncLLM.from_engine_args(args)
        self._tokenizer = self._llm.get_tokenizer()
        self.startup_s = time.perf_counter() - started
        logger.info("vLLM engine for %s ready in %.1f s", model, self.startup_s)

    @classmethod
    async def create(cls, model: str, **options: Any) -> VLLMEngine:
        """Build an engine from async code without blocking the event loop (the load runs in a
        worker thread; vLLM starts its output task lazily on the loop that first generates).
        `options`: the constructor's keywords."""
        return await asyncio.to_thread(cls, model, **options)

    @property
    def supports_sleep(self) -> bool:
        """Whether `sleep()`/`wake_up()` free and restore memory on this engine."""
        return self._sleep_enabled

    def count_prompt_tokens(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
        continue_final: bool = False,
    ) -> int:
        """The prompt length of `messages` after the chat template (`experts.prompt`)."""
        return len(self._encode(messages, tools, continue_final))

    def _encode(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
        continue_final: bool = False,
    ) -> list[int]:
        from experts.prompt import prompt_ids

        return prompt_ids(self._tokenizer, messages, tools, self.name, continue_final)

    async def stream_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int,
        temperature: float,
        top_p: float,
        stop: list[str] | None,
        seed: int | None,
        request_id: str,
    ) -> AsyncIterator[Delta]:
        """Generate a chat answer, yielding text deltas as vLLM produces them.

        Raises `ContextLengthExceededError` (on first iteration) when the templated prompt exceeds
        `max_model_len - 1` tokens; `max_tokens` is clamped to the room left in the context.
        Closing or cancelling the iteration aborts the request in vLLM.
        """
        request = ExpertRequest(request_id, messages, max_tokens, temperature, top_p, stop, seed)
        async with contextlib.aclosing(self.stream_request(request)) as inner:  # close = abort now
            async for delta in inner:
                yield delta

    async def stream_request(self, request: ExpertRequest) -> AsyncIterator[Delta]:
        """An `ExpertRequest` answered as deltas, every OpenAI parameter it carries honoured
        through vLLM's own request types (`experts/vllm_chat.py`). When the request offers tools,
        the text is held back and the last delta carries the content and the parsed tool calls."""
        from vllm.sampling_params import RequestOutputKind

        inner = self._generate(request, RequestOutputKind.DELTA)
        # aclosing: closing this generator must close the inner one now, which aborts in vLLM.
        async with contextlib.aclosing(inner):
            async for delta in inner:
                yield delta

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int,
        temperature: float,
        top_p: float,
        stop: list[str] | None,
        seed: int | None,
        request_id: str,
    ) -> Delta:
        """The whole answer at once (vLLM sends only the final output): one `Delta` with the full
        text, finish_reason and token counts. Same errors and cancellation as `stream_chat`."""
        from vllm.sampling_params import RequestOutputKind

        final: Delta | None = None
        request = ExpertRequest(request_id, messages, max_tokens, temperature, top_p, stop, seed)
        inner = self._generate(request, RequestOutputKind.FINAL_ONLY)
        async with contextlib.aclosing(inner):
            async for delta in inner:
                final = delta
        if final is None:  # vLLM always sends a finished output; this would be a vLLM bug
            raise RuntimeError(f"vLLM returned no output for request {request_id}")
        return final

    async def _generate(self, request: ExpertRequest, output_kind: Any) -> AsyncIterator[Delta]:
        from vllm.inputs import TokensPrompt

        from experts.vllm_chat import ChatPlan, openai_logprobs

        if self._llm is None:
            raise RuntimeError(f"engine for {self.model} was shut down")
        if self._sleeping:
            raise RuntimeError(f"engine for {self.model} is asleep; call wake_up() first")
        prompt_ids = self._encode(request.messages, request.tools if request.calls_tools else None,
                                  request.continue_final_message)
        limit = self.max_model_len - 1
        if len(prompt_ids) > limit:
            raise ContextLengthExceededError.of_prompt(len(prompt_ids), limit, self.name)
        plan = ChatPlan(
            request, self._tokenizer, self.tool_parser, who=self.name, output_kind=output_kind,
            tool_strict_level=self.tool_strict_level,
            max_tokens=min(request.max_tokens, self.max_model_len - len(prompt_ids)),
            stop=[*self.default_stop, *(request.stop or [])],
        )  # fmt: skip
        top = request.top_logprobs or 0
        completion_tokens = 0
        finished = False
        held: list[str] = []  # the text, when tool calls are parsed from the whole of it
        token_ids: list[int] = []
        held_logprobs: list[dict] = []
        outputs = self._llm.generate(
            TokensPrompt(prompt_token_ids=prompt_ids), plan.sampling, request_id=request.request_id
        )
        try:
            async for out in outputs:
                choice = out.outputs[0]
                # DELTA: token_ids are the new ones; FINAL_ONLY: one output with all of them.
                completion_tokens += len(choice.token_ids)
                finished = out.finished
                logprobs = None
                if request.logprobs and choice.logprobs is not None:
                    logprobs = openai_logprobs(list(choice.token_ids), choice.logprobs, top)
                reason = choice.finish_reason if finished else None
                stop = choice.stop_reason if finished else None  # the matched stop string or id
                cached = out.num_cached_tokens if finished else None
                counts = (len(prompt_ids), completion_tokens)
                if plan.buffers:
                    held.append(choice.text)
                    token_ids += choice.token_ids
                    held_logprobs += logprobs or []
                    if finished:
                        text, calls, reason = plan.finish("".join(held), token_ids, reason)
                        yield Delta(text, reason, *counts, held_logprobs if request.logprobs
                                    else None, calls, matched_stop(request, stop, reason),
                                    cached)  # fmt: skip
                elif choice.text or finished:
                    yield Delta(choice.text, reason, *counts, logprobs,
                                stop=matched_stop(request, stop, reason), cached_tokens=cached)  # fmt: skip
        finally:
            # Consumer went away (GeneratorExit/CancelledError) or failed: stop the generation
            # now rather than when the garbage collector closes vLLM's generator.
            if not finished:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._llm.abort(request.request_id))
            await outputs.aclose()

    async def moe_kernel_stats(self) -> dict[str, Any]:
        """Quorum MoE-layer calls/layers/fallbacks, read from the model's process(es) (see sum_stats)."""
        from experts.moe.vllm_plugin import sum_stats

        return sum_stats(await self._llm.collective_rpc("quorum_moe_stats"))

    def num_running_requests(self) -> int:
        """Requests admitted and not finished yet (running or queued in vLLM)."""
        return self._llm.get_num_unfinished_requests() if self._llm is not None else 0

    async def abort(self, request_id: str) -> None:
        """Abort a running request (no-op when it is unknown or already finished)."""
        await self._llm.abort(request_id)

    async def sleep(self, level: int = 1) -> None:
        """Free the engine's memory (level 1: offload weights, drop KV cache; 2: drop both)."""
        if not self.supports_sleep:
            raise SleepNotSupportedError(
                f"engine for {self.model} cannot sleep: "
                + (
                    "it was not built with engine_kwargs={'enable_sleep_mode': True}"
                    if platform_supports_sleep()
                    else "vLLM has no sleep mode on this platform (CPU); shut the engine down and "
                    "start a new one instead"
                )
            )
        await self._llm.sleep(level)
        self._sleeping = True

    async def wake_up(self) -> None:
        """Restore what `sleep()` freed; the engine then serves requests again."""
        if not self.supports_sleep:
            raise SleepNotSupportedError(f"engine for {self.model} cannot sleep or wake up")
        await self._llm.wake_up()
        self._sleeping = False

    def shutdown(self) -> None:
        """Stop vLLM's engine process and release its memory. The engine is unusable afterwards."""
        llm = getattr(self, "_llm", None)
        if llm is not None:
            llm.shutdown()
            self._llm = None


def _is_local_dir(model: str) -> bool:
    from pathlib import Path

    return Path(model).is_dir()
