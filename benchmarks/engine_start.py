"""One vLLM engine's startup, answer latency and (optionally) shutdown + restart.

    python -m benchmarks.engine_start builtin:smollm2-135m-instruct [--restart]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from experts.engine import VLLMEngine
from experts.paths import go_offline
from experts.stream import ExpertRequest


async def main(spec: str, max_model_len: int, restart: bool) -> None:
    """Startup, ~20-token answer latency and (optionally) shutdown + restart of one engine."""
    from experts.models import resolve_model

    model = resolve_model(spec)
    engine = await VLLMEngine.create(model, max_model_len=max_model_len)
    print(f"{spec}: startup {engine.startup_s:.1f} s, sleep supported: {engine.supports_sleep}")
    question = [{"role": "user", "content": "Explain photosynthesis in one paragraph."}]
    for i in range(3):
        t0, first, text = time.perf_counter(), None, ""
        request = ExpertRequest(f"bench-{i}", question, max_tokens=20, temperature=0.0, seed=0)
        async for d in engine.stream_request(request):
            first = first or time.perf_counter() - t0
            text += d.text
        print(
            f"  answer {time.perf_counter() - t0:.2f} s (first text {first:.2f} s), "
            f"{d.completion_tokens} tokens, {d.finish_reason}: {text!r}"
        )
    t0 = time.perf_counter()
    engine.shutdown()
    print(f"  shutdown {time.perf_counter() - t0:.1f} s")
    if restart:
        again = await VLLMEngine.create(model, max_model_len=max_model_len)
        print(f"  restart {again.startup_s:.1f} s")
        again.shutdown()


if __name__ == "__main__":
    go_offline()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="builtin:<name>, an HF folder or an HF id")
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--restart", action="store_true")
    cli = parser.parse_args()
    asyncio.run(main(cli.model, cli.max_model_len, cli.restart))
