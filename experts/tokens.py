"""Prompt length in an expert's own tokens, before the request reaches the expert.

`TemplateTokenCounter` loads each hosted expert's tokenizer (its Hugging Face folder, the one
the engine loads) on first use and counts a request as the engine will: the chat template with
the tools and the generation prompt, then the tokenizer. Experts behind `backend: openai` are not
counted (None): their tokenizer is not known here, and the remote server refuses a prompt too
long for it itself.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from experts.registry import Registry

__all__ = ["TemplateTokenCounter", "TokenCounter"]

log = logging.getLogger(__name__)


class TokenCounter(Protocol):
    def count(
        self, expert: str, messages: list[dict[str, Any]], tools: list[dict] | None,
        continue_final: bool = False,
    ) -> int | None:
        """The prompt length of `messages` (and `tools`) for `expert`, or None if unknown;
        `continue_final`: the answer continues the last (assistant) message."""


class TemplateTokenCounter:
    """Counts with each hosted expert's own tokenizer and chat template (loaded lazily)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._tokenizers: dict[str, Any] = {}
        self._lock = threading.Lock()

    def warm(self) -> None:
        """Load every hosted expert's tokenizer now (seconds each; run it in a thread)."""
        for expert in self.registry.experts:
            self._tokenizer(expert.name)

    def _tokenizer(self, name: str) -> Any | None:
        expert = self.registry.expert(name)
        if expert.backend != "vllm":
            return None
        with self._lock:
            if name not in self._tokenizers:
                from transformers import AutoTokenizer

                from experts.models import resolve_model

                try:
                    path = resolve_model(expert.model)
                    self._tokenizers[name] = AutoTokenizer.from_pretrained(path)
                except Exception as exc:  # not available here: the engine still checks the length
                    log.warning("expert %s: no tokenizer to count prompts with (%s: %s); its "
                                "prompts are checked by its engine only",
                                name, type(exc).__name__, exc)  # fmt: skip
                    self._tokenizers[name] = None
            return self._tokenizers[name]

    def count(
        self, expert: str, messages: list[dict[str, Any]], tools: list[dict] | None,
        continue_final: bool = False,
    ) -> int | None:
        from experts.prompt import prompt_ids

        tokenizer = self._tokenizer(expert)
        if tokenizer is None:
            return None
        return len(prompt_ids(tokenizer, messages, tools, f"expert '{expert}'", continue_final))
