"""Experts: what the expert LLMs are and how to talk to them (the bottom of the package stack:
`experts` <- `router` <- `skills` <- `serving`; it imports none of the others).

| module        | what                                                                        |
|---------------|-----------------------------------------------------------------------------|
| `registry.py` | the YAML registry's experts and virtual models (pydantic); `config.py` its   |
|               | service-wide sections (router, auth, residency)                              |
| `stream.py`   | `ExpertRequest` in, `Delta`s out: the plain data every stage passes          |
| `clients.py`  | `ExpertClient`: an OpenAI-compatible server over HTTP, or a hosted engine     |
|               | through a Ray Serve handle                                                   |
| `engine.py`   | `VLLMEngine` (vLLM's `AsyncLLM`) and `HostedExpert`, the server a deployment runs |
| `answers.py`  | reading answers, voting, the synthesis prompt (live and in profiling)        |
| `models.py`   | the built-in tiny models, prepared from their PyPI packages                  |
| `errors.py`   | the typed errors, each with its HTTP status and OpenAI error type            |
| `moe/`        | a different sense of "expert": the token-level sparse-MoE layer (Triton      |
|               | kernels) that runs *inside* a hosted MoE model                               |

Names are imported on first use (PEP 562), so `import experts.moe.kernels` works on a GPU image
that has torch and triton but not the service's dependencies (pydantic, yaml).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

_EXPORTS = {
    "ContextLengthExceededError": "experts.errors",
    "ExpertError": "experts.errors",
    "ExpertTimeoutError": "experts.errors",
    "ExpertUnavailableError": "experts.errors",
    "InvalidRequestError": "experts.errors",
    "ModelNotFoundError": "experts.errors",
    "QuorumError": "experts.errors",
    "RegistryError": "experts.errors",
    "RequestTooLargeError": "experts.errors",
    "Delta": "experts.stream",
    "ExpertClient": "experts.clients",
    "ExpertRequest": "experts.stream",
    "Expert": "experts.registry",
    "Registry": "experts.registry",
    "load_registry": "experts.registry",
    "parse_registry": "experts.registry",
}

__all__ = sorted(_EXPORTS)


def lazy_facade(package: str, exports: dict[str, str]):
    """`__getattr__` and `__dir__` for a package whose public names are imported on first use
    (PEP 562): `exports` maps each name to the module that defines it."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__


__getattr__, __dir__ = lazy_facade(__name__, _EXPORTS)
