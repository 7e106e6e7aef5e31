"""Fuzz the HTTP API from its OpenAPI schema and record the generated-case count.

    python -m benchmarks.fuzz [--examples N]

Runs tests/fuzz/test_api_fuzz.py (schemathesis + hypothesis against the in-process app with scripted experts) and
writes the number of generated cases per operation and status, and whether any was a 5xx, to the
`fuzz` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse

from benchmarks._results import machine_description, write_section
from benchmarks._schemathesis_run import run_schemathesis_test


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100, help="cases per operation and mode")
    args = parser.parse_args(argv)
    run = run_schemathesis_test("tests/fuzz/test_api_fuzz.py", "FUZZ", args.examples)
    data, elapsed = run.report, run.elapsed_s
    server_errors = sum(n for k, n in data["by_status"].items() if k.rsplit(" ", 1)[1] >= "500")
    rows = "\n".join(f"| {k} | {n} |" for k, n in sorted(data["by_status"].items()))
    body = (
        f"Schemathesis {run.version} generated **{data['cases']} cases** from /openapi.json "
        f"(valid and invalid bodies, with and without an API key) in {elapsed:.0f} s; "
        f"**{server_errors} got a 5xx**; pytest exit status {run.returncode}.\n\n"
        "| key, mode, operation → status | cases |\n|---|---|\n" + rows
    )
    write_section("fuzz", "HTTP API fuzzing", f"python -m benchmarks.fuzz --examples "
                  f"{args.examples}", machine_description(), body)  # fmt: skip
    return run.returncode


if __name__ == "__main__":
    raise SystemExit(main())
