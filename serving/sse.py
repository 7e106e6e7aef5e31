"""How streamed answers are framed: Server-Sent Events as OpenAI, the Responses API and Anthropic
send them, and OpenAI's stream obfuscation (random padding on streamed text)."""

from __future__ import annotations

import json
import secrets
from typing import Any

__all__ = ["named_sse", "obfuscation", "sse"]


def sse(payload: dict[str, Any] | str) -> bytes:
    """One Server-Sent Event, as OpenAI frames them: `data: <json>\\n\\n`."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def obfuscation(text: str) -> str:
    """OpenAI's stream obfuscation: random characters that bring a streamed piece of text to the
    next multiple of 32 characters (adding at least 8), so the size of an encrypted event does not
    tell which token it carries."""
    n = 8 + (-len(text) - 8) % 32
    return secrets.token_urlsafe(n)[:n]


def named_sse(event: str, payload: dict[str, Any]) -> bytes:
    """One named Server-Sent Event (`event: <name>`), as the Responses and Anthropic APIs send."""
    return f"event: {event}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()
