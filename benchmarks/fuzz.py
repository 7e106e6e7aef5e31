"""Fuzz the HTTP API from its OpenAPI schema and record the generated-case count.

    python -m benchmarks.fuzz [--examples N]

Runs tests/fuzz (schemathesis + hypothesis against the in-process app with scripted experts) and
writes the number of generated cases per operation and status, and whether any was a 5xx, to the
`fuzz` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._results import machine_description, write_section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100, help="cases per operation and mode")
    args = parser.parse_args(argv)
    report = Path(tempfile.mkdtemp(prefix="quorum-fuzz-")) / "fuzz.json"
    env = os.environ | {"QUORUM_FUZZ_REPORT": str(report),
                        "QUORUM_FUZZ_EXAMPLES": str(args.examples)}  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/fuzz"], env=env, capture_output=True, text=True)  # fmt: skip
    elapsed = time.perf_counter() - started
    print(proc.stdout[-3000:], proc.stderr[-2000:], sep="\n")
    data = json.loads(report.read_text())
    server_errors = sum(n for k, n in data["by_status"].items() if k.rsplit(" ", 1)[1] >= "500")
    rows = "\n".join(f"| {k} | {n} |" for k, n in sorted(data["by_status"].items()))
    body = (
        f"Schemathesis {_version()} generated **{data['cases']} cases** from /openapi.json "
        f"(valid and invalid bodies, with and without an API key) in {elapsed:.0f} s; "
        f"**{server_errors} got a 5xx**; pytest exit status {proc.returncode}.\n\n"
        "| key, mode, operation → status | cases |\n|---|---|\n" + rows
    )
    write_section("fuzz", "HTTP API fuzzing", f"python -m benchmarks.fuzz --examples "
                  f"{args.examples}", machine_description(), body)  # fmt: skip
    return proc.returncode


def _version() -> str:
    import schemathesis

    return schemathesis.__version__


if __name__ == "__main__":
    raise SystemExit(main())
