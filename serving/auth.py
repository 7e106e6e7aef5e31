"""Access control at the ingress: API keys, per-key request rates and token budgets.

Keys come from a YAML/JSON file (`auth.keys_file` in the registry, or `$QUORUM_API_KEYS_FILE`)
and from `$QUORUM_API_KEYS` / `$QUORUM_ADMIN_KEYS` (comma-separated `name=key` or bare keys).
Only their SHA-256 digests are kept (a file may list `sha256: <hex>` instead of `key:`); the
plaintext never leaves `load_keys`, and neither keys nor prompt text are logged. With no key
configured, access control is off (the embedded default: any client `api_key` works).

A request presents `Authorization: Bearer <key>` (or `x-api-key`). Then:

    /health, /livez, /readyz, /docs, /openapi.json   open
    /admin/*, /v1/admin/*              need an admin key              (else 403)
    everything else                    needs a known key              (else 401)
    over `requests_per_minute`         429 rate_limit_exceeded, Retry-After
    over `tokens_per_day`              429 insufficient_quota (prompt + completion tokens, UTC day)

Counters live in Redis when it is configured (shared by every ingress replica; fixed windows,
keys `quorum:ratelimit:<key name>:<minute>` and `quorum:tokens:<key name>:<day>`, both expiring),
in process otherwise, and in process while Redis is unreachable.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.routing import Match

from experts.errors import (
    AuthenticationError,
    PermissionDeniedError,
    QuorumError,
    RateLimitError,
    RegistryError,
)
from experts.registry import AuthConfig
from serving.contract import error_response_for
from serving.limits import InMemoryLimiter, RedisLimiter, UsageLimiter

__all__ = ["ApiKey", "Authenticator", "InMemoryLimiter", "RedisLimiter", "UsageLimiter",
           "hash_key", "load_keys"]  # fmt: skip

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/livez", "/readyz", "/docs", "/docs/oauth2-redirect",
                        "/openapi.json", "/redoc"})  # probes and docs carry no key  # fmt: skip
ADMIN_PREFIXES = ("/admin", "/v1/admin")

Clock = Callable[[], float]


def hash_key(key: str) -> str:
    """The stored form of an API key: SHA-256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """One configured key, without its plaintext. Plain data: it crosses Ray actor boundaries."""

    name: str
    digest: str
    admin: bool = False
    requests_per_minute: int | None = None
    tokens_per_day: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, description="Shown in logs and metrics.")
    key: str | None = Field(None, min_length=16, description="The bearer token (hashed on load).")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="Or its SHA-256.")
    admin: bool = Field(False, description="May call admin endpoints.")
    requests_per_minute: int | None = Field(None, ge=1, description="Overrides the default.")
    tokens_per_day: int | None = Field(None, ge=1, description="Overrides the default.")

    @model_validator(mode="after")
    def _one_secret(self) -> _KeyEntry:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError("give exactly one of `key` (the token) or `sha256` (its digest)")
        return self


class _KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keys: list[_KeyEntry] = Field(min_length=1)


def _from_file(path: Path, config: AuthConfig) -> list[ApiKey]:
    if not path.is_file():
        raise RegistryError(
            f"API key file not found: {path} (auth.keys_file / QUORUM_API_KEYS_FILE)"
        )
    try:
        data = yaml.safe_load(path.read_text())
        parsed = _KeyFile.model_validate(data)
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path}: not valid YAML/JSON: {exc}") from None
    except ValidationError as exc:
        # Never echo the input: it may be a key.
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in exc.errors()
        )
        raise RegistryError(
            f"{path}: invalid API key file ({problems}); expected `keys: [{{name, key | sha256, "
            "admin, requests_per_minute, tokens_per_day}}]`"
        ) from None
    return [
        ApiKey(
            name=e.name,
            digest=e.sha256 or hash_key(e.key or ""),
            admin=e.admin,
            requests_per_minute=e.requests_per_minute or config.requests_per_minute,
            tokens_per_day=e.tokens_per_day or config.tokens_per_day,
        )
        for e in parsed.keys
    ]


def _from_env(value: str, prefix: str, admin: bool, config: AuthConfig) -> list[ApiKey]:
    keys = []
    for i, item in enumerate(p.strip() for p in value.split(",")):
        if not item:
            continue
        name, sep, token = item.partition("=")
        if not sep:
            name, token = f"{prefix}{i}", item
        keys.append(ApiKey(name.strip(), hash_key(token.strip()), admin,
                           config.requests_per_minute, config.tokens_per_day))  # fmt: skip
    return keys


def load_keys(config: AuthConfig, environ: Mapping[str, str] | None = None) -> list[ApiKey]:
    """Every configured key, hashed. Empty: access control is off."""
    env = os.environ if environ is None else environ
    keys: list[ApiKey] = []
    for path in (config.keys_file, env.get("QUORUM_API_KEYS_FILE")):
        if path:
            keys += _from_file(Path(path), config)
    keys += _from_env(env.get("QUORUM_API_KEYS", ""), "env-key-", False, config)
    keys += _from_env(env.get("QUORUM_ADMIN_KEYS", ""), "env-admin-", True, config)
    names = [k.name for k in keys]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RegistryError(f"API key names must be unique; repeated: {', '.join(duplicates)}")
    return keys


class Meter:
    """Tokens one request used; filled by `MeteringObserver`, charged when the response ends.
    `key`: the name of the API key the request came with."""

    def __init__(self, key: str | None = None) -> None:
        self.tokens = 0
        self.key = key


_meter: contextvars.ContextVar[Meter | None] = contextvars.ContextVar("quorum_meter", default=None)


def current_key() -> str | None:
    """The name of the API key of the request being served; None without auth."""
    meter = _meter.get()
    return None if meter is None else meter.key


def record_tokens(prompt_tokens: int, completion_tokens: int) -> None:
    """Charge tokens to the API key of the request being served (no-op without auth)."""
    meter = _meter.get()
    if meter is not None:
        meter.tokens += max(0, prompt_tokens) + max(0, completion_tokens)


class Authenticator:
    """Decides whether one request may proceed; raises the 401/403/429 `QuorumError`."""

    def __init__(
        self, keys: list[ApiKey], limiter: UsageLimiter | None = None, clock: Clock = time.time
    ) -> None:
        self._by_digest = {k.digest: k for k in keys}
        self.limiter = limiter or InMemoryLimiter()
        self.clock = clock

    @property
    def enabled(self) -> bool:
        return bool(self._by_digest)

    def identify(self, headers: Mapping[str, str]) -> ApiKey:
        """The key presented in `Authorization: Bearer ...` or `x-api-key` (401 otherwise)."""
        token = headers.get("x-api-key", "")
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            token = value.strip()
        if not token:
            raise AuthenticationError(
                "no API key: send it as `Authorization: Bearer <key>` (the `api_key` of the "
                "openai client)"
            )
        key = self._by_digest.get(hash_key(token))
        if key is None:
            raise AuthenticationError(
                "incorrect API key provided; ask the Quorum operator for a valid key"
            )
        return key

    def day(self) -> str:
        return time.strftime("%Y%m%d", time.gmtime(self.clock()))

    def admit(self, path: str, headers: Mapping[str, str]) -> ApiKey | None:
        """None for open paths; else the caller's key, after the permission and limit checks."""
        if not self.enabled or path in OPEN_PATHS:
            return None
        key = self.identify(headers)
        if path.startswith(ADMIN_PREFIXES) and not key.admin:
            raise PermissionDeniedError(
                f"{path} needs an admin key; key '{key.name}' is not one", code="admin_key_required"
            )
        if key.requests_per_minute is not None:
            now = self.clock()
            window = int(now // 60)
            count = self.limiter.hit(key.name, window, ttl_s=120)
            if count > key.requests_per_minute:
                raise RateLimitError(
                    f"key '{key.name}' made {count} requests this minute; its limit is "
                    f"{key.requests_per_minute} per minute; retry after the window ends",
                    retry_after_s=60 - now % 60,
                )
        if key.tokens_per_day is not None:
            used = self.limiter.tokens(key.name, self.day())
            if used >= key.tokens_per_day:
                now = self.clock()
                raise RateLimitError(
                    f"key '{key.name}' used {used} tokens today (UTC); its budget is "
                    f"{key.tokens_per_day} per day",
                    code="insufficient_quota",
                    retry_after_s=86400 - now % 86400,
                )
        return key

    def charge(self, key: ApiKey, tokens: int) -> None:
        if tokens > 0 and key.tokens_per_day is not None:
            self.limiter.add_tokens(key.name, self.day(), tokens)


class AuthMiddleware:
    """ASGI middleware around the whole API, so endpoints added later are covered too."""

    def __init__(self, app: Any, auth: Authenticator, router: Any = None) -> None:
        self.app = app
        self.auth = auth
        self.router = router  # the app's router: requests no route takes are answered 404/405

    def routed(self, scope: dict) -> bool:
        """Whether a route takes this method on this path (else the app answers 404/405, with
        `Allow`, whoever asks: the schema at /openapi.json is public anyway)."""
        if self.router is None:
            return True
        return any(route.matches(scope)[0] is Match.FULL for route in self.router.routes)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.routed(scope):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}  # fmt: skip
        try:
            key = self.auth.admit(scope.get("path", ""), headers)
        except QuorumError as exc:
            log.info("refused %s %s: %s", scope.get("method"), scope.get("path"), exc.code)
            await error_response_for(scope.get("path", ""), exc)(scope, receive, send)
            return
        if key is None:
            await self.app(scope, receive, send)
            return
        meter = Meter(key.name)
        token = _meter.set(meter)
        try:
            await self.app(scope, receive, send)
        finally:
            _meter.reset(token)
            self.auth.charge(key, meter.tokens)


def install(api: Any, auth: Authenticator | None) -> None:
    """Put access control in front of `api` (a FastAPI app); nothing when auth is off."""
    if auth is None or not auth.enabled:
        return
    api.add_middleware(AuthMiddleware, auth=auth, router=api.router)
    log.info("access control on: %d API key(s)", len(auth._by_digest))


def build_authenticator(
    keys: list[ApiKey] | list[dict], redis_url: str | None = None
) -> Authenticator | None:
    """The ingress's authenticator from hashed keys (dicts after crossing Ray); None when off."""
    parsed = [k if isinstance(k, ApiKey) else ApiKey(**k) for k in keys]
    if not parsed:
        return None
    limiter: UsageLimiter = RedisLimiter.from_url(redis_url) if redis_url else InMemoryLimiter()
    return Authenticator(parsed, limiter)
