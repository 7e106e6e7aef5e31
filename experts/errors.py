"""Quorum's error hierarchy. Each class carries the HTTP status and OpenAI error `type` it maps to;
the ingress maps them once, at the edge. All of them pickle (they cross Ray actor boundaries)."""

from __future__ import annotations


class QuorumError(Exception):
    """Base class. `message` says what was received, the limit, and the fix."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def __reduce__(self):  # keep param/code across pickling
        return (_rebuild, (type(self), self.message, self.param, self.code))

    def to_openai(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def _rebuild(cls: type[QuorumError], message: str, param: str | None, code: str | None):
    return cls(message, param=param, code=code)


class RegistryError(QuorumError):
    """The expert registry is invalid (raised at startup)."""

    status = 500
    type = "configuration_error"
    code = "invalid_registry"


class InvalidRequestError(QuorumError):
    status = 400
    type = "invalid_request_error"


class RequestTooLargeError(InvalidRequestError):
    status = 413
    code = "request_too_large"


class ContextLengthExceededError(InvalidRequestError, ValueError):
    """The chat-templated prompt leaves no room for a single generated token. Raised by the
    engine itself (`experts/engine.py`), typed for the client: a 400 that says how long the
    prompt was, the limit, and the fix; `prompt_tokens` and `limit` when the engine counted."""

    code = "context_length_exceeded"

    def __init__(self, message: str, *, param: str | None = "messages", code: str | None = None,
                 prompt_tokens: int | None = None, limit: int | None = None) -> None:  # fmt: skip
        super().__init__(message, param=param, code=code)
        self.prompt_tokens = prompt_tokens
        self.limit = limit

    @classmethod
    def of_prompt(cls, prompt_tokens: int, limit: int, who: str = "this model"):
        return cls(
            f"{who}: the prompt is {prompt_tokens} tokens after the chat template; it accepts at "
            f"most {limit} prompt tokens (max_model_len {limit + 1} minus 1 to generate); shorten "
            "the messages",
            prompt_tokens=prompt_tokens, limit=limit,
        )  # fmt: skip

    def __reduce__(self):  # crosses Ray actors: keep the counts too
        return (_rebuild_context, (self.message, self.param, self.code, self.prompt_tokens,
                                   self.limit))  # fmt: skip


def _rebuild_context(message, param, code, prompt_tokens, limit) -> ContextLengthExceededError:
    return ContextLengthExceededError(message, param=param, code=code,
                                      prompt_tokens=prompt_tokens, limit=limit)  # fmt: skip


class ModelNotFoundError(QuorumError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class ExpertError(QuorumError):
    """An expert failed to answer."""

    status = 502
    type = "expert_error"
    code = "expert_failed"


class ExpertTimeoutError(ExpertError):
    status = 504
    code = "expert_timeout"


class ExpertUnavailableError(ExpertError):
    status = 503
    code = "expert_unavailable"


class AuthenticationError(QuorumError):
    """No API key, or one Quorum does not know (OpenAI answers the same way)."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDeniedError(QuorumError):
    """A known key asked for something it may not use (an admin endpoint, a model)."""

    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class RateLimitError(QuorumError):
    """A key went over its request rate or token budget. `retry_after_s` becomes `Retry-After`."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.retry_after_s = retry_after_s

    def __reduce__(self):
        return (_rebuild_rate_limit, (type(self), self.message, self.code, self.retry_after_s))

    @property
    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"retry-after": str(max(1, int(self.retry_after_s + 0.999)))}


def _rebuild_rate_limit(cls, message: str, code: str | None, retry_after_s: float | None):
    return cls(message, code=code, retry_after_s=retry_after_s)


class RoutingTimeoutError(QuorumError):
    """Classification and recruitment took longer than `router.route_timeout_s`."""

    status = 504
    type = "server_error"
    code = "routing_timeout"
