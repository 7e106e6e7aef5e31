"""Experts: the registry of expert LLMs, their engines, and the kernels of the MoE ones.

Heavy pieces are imported from their modules on use: `experts.engine` (vLLM),
`experts.models` (model preparation), `experts.kernels` / `experts.moe` (Triton).
"""

from experts.errors import (
    ContextLengthExceededError,
    ExpertError,
    ExpertTimeoutError,
    ExpertUnavailableError,
    InvalidRequestError,
    ModelNotFoundError,
    QuorumError,
    RegistryError,
    RequestTooLargeError,
)
from experts.registry import Expert, Registry, load_registry, parse_registry

__all__ = [
    "ContextLengthExceededError",
    "Expert",
    "ExpertError",
    "ExpertTimeoutError",
    "ExpertUnavailableError",
    "InvalidRequestError",
    "ModelNotFoundError",
    "QuorumError",
    "Registry",
    "RegistryError",
    "RequestTooLargeError",
    "load_registry",
    "parse_registry",
]
