"""Write one benchmark's section of benchmarks/RESULTS.md, leaving the other sections alone.

Each benchmark owns a section delimited by HTML comments, so several benchmarks (and people)
can update the file independently:

    <!-- section:classifier -->
    ...
    <!-- /section:classifier -->
"""

from __future__ import annotations

import datetime as _dt
import platform
import re
import sys
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
_HEADER = (
    "# Benchmark results\n\nEach section is written by the command it names; do not edit by hand.\n"
)


def machine_description() -> str:
    """A one-line description of the machine a benchmark ran on."""
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPU cores ({cpu}), Python {sys.version.split()[0]}"


def write_section(name: str, title: str, command: str, machine: str, body: str) -> Path:
    """Replace (or append) section `name` with a titled block stating command, machine and date."""
    date = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    block = (
        f"<!-- section:{name} -->\n## {title}\n\n"
        f"- Command: `{command}`\n- Machine: {machine}\n- Date: {date}\n\n"
        f"{body.rstrip()}\n<!-- /section:{name} -->"
    )
    text = RESULTS.read_text() if RESULTS.exists() else _HEADER
    pattern = re.compile(
        rf"<!-- section:{re.escape(name)} -->.*?<!-- /section:{re.escape(name)} -->", re.S
    )
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)
    return RESULTS
