"""Time from `quorum serve` (embedded default) to the first generated answer.

    .venv/bin/python -m benchmarks.startup [--runs 3]

Each run starts `quorum serve` in a fresh process (fresh Ray cluster, both vLLM CPU engines),
then asks the `openai` client for an answer every second until one arrives. The built-in models
are prepared beforehand (`quorum models prepare`, timed separately the first time it runs).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from benchmarks._results import machine_description, write_section
from experts.paths import OFFLINE_ENV

ROOT = Path(__file__).resolve().parents[1]
COMMAND = ".venv/bin/python -m benchmarks.startup"


def one_run(port: int) -> tuple[float, float, str]:
    env = os.environ | OFFLINE_ENV
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "serve", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    body = {"model": "auto", "max_tokens": 16, "temperature": 0,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]}  # fmt: skip
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"quorum serve exited with {proc.returncode}")
            try:
                t1 = time.perf_counter()
                r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=120)
                if r.status_code == 200:
                    answer = r.json()["choices"][0]["message"]["content"]
                    return time.perf_counter() - t0, time.perf_counter() - t1, answer
            except httpx.HTTPError:
                pass
            time.sleep(1)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--port", type=int, default=8311)
    args = parser.parse_args()
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "serving.cli", "models", "prepare"], cwd=ROOT, check=True)
    prepare_s = time.perf_counter() - t
    rows = []
    for i in range(args.runs):
        total, first, answer = one_run(args.port)
        rows.append(total)
        print(f"run {i + 1}: first answer after {total:.1f}s (that request {first:.2f}s): {answer!r}", flush=True)
    lines = [
        "| runs | median s to first answer | min | max |",
        "|---|---|---|---|",
        f"| {len(rows)} | {statistics.median(rows):.1f} | {min(rows):.1f} | {max(rows):.1f} |",
        "",
        f"`quorum models prepare` before the runs took {prepare_s:.1f}s (models already prepared "
        "take about a second; a first preparation converts both GGUF files).",
    ]
    command = " ".join([COMMAND, *sys.argv[1:]])
    write_section("startup", "Time from `quorum serve` to the first answer (issue 2)", command,
                  machine_description(), "\n".join(lines))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
