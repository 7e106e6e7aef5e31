"""Run one schemathesis test file under pytest and read back the counts it reports.

`benchmarks.fuzz` and `benchmarks.contract` record what tests/fuzz generated: each test file
writes its counts as JSON to the file named by `QUORUM_<NAME>_REPORT` and takes its examples per
operation from `QUORUM_<NAME>_EXAMPLES`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Run:
    report: dict  # what the test wrote to its report file
    elapsed_s: float
    returncode: int  # pytest's exit status
    version: str  # schemathesis's


def run_schemathesis_test(test: str, name: str, examples: int) -> Run:
    """Run `test` (a path under tests/fuzz) with `QUORUM_<NAME>_EXAMPLES=examples`; print pytest's
    tail; return the report it wrote."""
    import schemathesis

    report = Path(tempfile.mkdtemp(prefix=f"quorum-{name.lower()}-")) / "report.json"
    env = os.environ | {f"QUORUM_{name}_REPORT": str(report),
                        f"QUORUM_{name}_EXAMPLES": str(examples)}  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
                          env=env, capture_output=True, text=True)  # fmt: skip
    elapsed = time.perf_counter() - started
    print(proc.stdout[-3000:], proc.stderr[-2000:], sep="\n")
    if not report.exists():
        raise SystemExit(f"{test} wrote no report (pytest exit status {proc.returncode})")
    data = json.loads(report.read_text())
    return Run(data, elapsed, proc.returncode, schemathesis.__version__)
