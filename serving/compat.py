"""What the other API surfaces (`/v1/completions`, `/v1/responses`, Anthropic's `/v1/messages`)
share: each translates its request into a chat request and hands it to the same `Pipeline`
(classify → recruit → dispatch | aggregate), then translates the answer back. `Surface` carries
the two ingress functions every surface needs (read a body within the size limit; validate a chat
request against the registry's limits), so these modules do not import the ingress.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from experts.errors import InvalidRequestError
from serving.chat_params import is_noop
from serving.protocol import ChatCompletionRequest, validation_error

__all__ = ["Surface", "in_their_words", "refuse", "validate"]

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Surface:
    body: Callable[[Request], Awaitable[dict[str, Any]]]  # the JSON body, size-limited
    chat: Callable[[dict[str, Any]], ChatCompletionRequest]  # chat request, limits checked


def validate(model: type[M], data: dict[str, Any]) -> M:
    """`data` as `model`, or a 400 naming the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def refuse(data: dict[str, Any], rules: dict[str, tuple[Any, str]]) -> None:
    """A 400 for the first field of `data` set to something other than its no-op value in
    `rules` (`name -> (no-op value, why and what to send instead)`)."""
    for name, (noop, why) in rules.items():
        if not is_noop(data.get(name), noop):
            raise InvalidRequestError(f"'{name}' is not supported: {why}", param=name,
                                      code="unsupported_parameter")  # fmt: skip


def in_their_words(
    chat: Callable[[dict[str, Any]], ChatCompletionRequest],
    body: dict[str, Any],
    names: dict[str, str],
) -> ChatCompletionRequest:
    """`chat(body)`, with a refusal's parameter named as this surface names it (`names`: chat's
    name -> the surface's, e.g. max_tokens -> max_output_tokens)."""
    try:
        return chat(body)
    except InvalidRequestError as exc:
        theirs = names.get(exc.param or "")
        if theirs is None:
            raise
        message = exc.message.replace(f"'{exc.param}'", f"'{theirs}'")
        raise type(exc)(message, param=theirs, code=exc.code) from None
