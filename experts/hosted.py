"""A hosted expert: one registry entry served by its own vLLM engine.

`engine_options(spec)` is the one place a registry entry becomes `VLLMEngine` options (the
residency manager builds engines from it too); `HostedExpert` is the server class that
`serving/deployments.py` makes a Ray Serve deployment, so the request path goes from the
ingress's client straight to it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from experts.engine import VLLMEngine
from experts.errors import ExpertError, QuorumError
from experts.models import resolve_model
from experts.registry import Expert
from experts.stream import Delta, ExpertRequest

__all__ = ["HostedExpert", "engine_options"]

logger = logging.getLogger(__name__)


def engine_options(spec: Expert, engine_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """`VLLMEngine`'s arguments for registry entry `spec`; `engine_kwargs` replaces the entry's
    `engine_args`."""
    return dict(model=resolve_model(spec.model), max_model_len=spec.context_length,
                engine_kwargs=spec.engine_args if engine_kwargs is None else engine_kwargs,
                name=spec.name, moe_kernels=spec.moe_kernels,
                tool_parser=spec.capabilities.tool_parser,
                tool_strict_level=spec.capabilities.tool_strict_level)  # fmt: skip


class HostedExpert:
    """One hosted expert as a server: its engine, built from the registry entry, streaming
    `Delta`s for `ExpertRequest`s. Plain Python, so unit tests can hold one too."""

    def __init__(self, expert: dict[str, Any]) -> None:
        self.expert = Expert.model_validate(expert)
        self.engine = VLLMEngine(**engine_options(self.expert))

    async def stream_chat(self, request: ExpertRequest) -> AsyncIterator[Delta]:
        try:
            async for delta in self.engine.stream_request(request):
                yield delta
        except QuorumError:
            raise
        except Exception as exc:
            logger.exception("expert %s failed on %s", self.expert.name, request.request_id)
            raise ExpertError(f"expert '{self.expert.name}' failed: {type(exc).__name__}") from None
