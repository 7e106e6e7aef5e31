"""Experts: the registry of expert LLMs, their engines, and the kernels of the MoE ones.

Names are imported on first use (PEP 562), so `import experts.kernels` works on a GPU image that
has torch and triton but not the service's dependencies (pydantic, yaml). Heavy pieces live in
their modules: `experts.engine` (vLLM), `experts.models` (model preparation),
`experts.kernels` / `experts.moe` (Triton).
"""

from __future__ import annotations

import importlib
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
    "Expert": "experts.registry",
    "Registry": "experts.registry",
    "load_registry": "experts.registry",
    "parse_registry": "experts.registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'experts' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
