"""Access control and request limits through the real HTTP API (scripted experts, in-memory or
fake-Redis counters passed through constructors)."""

import asyncio
import json
import logging

import pytest
import redis
from fastapi.testclient import TestClient

from experts.errors import RegistryError
from experts.registry import AuthConfig, parse_registry
from serving.auth import (
    ApiKey,
    Authenticator,
    InMemoryLimiter,
    RedisLimiter,
    build_authenticator,
    hash_key,
    load_keys,
)
from serving.ingress import create_api
from serving.observe import Observer
from serving.pipeline import Pipeline
from tests.fakes import FakeExpert

ALICE = "sk-alice-0123456789abcdef"
ADMIN = "sk-admin-0123456789abcdef"
SECRET_PROMPT = "my-secret-prompt-text-42"

REGISTRY = parse_registry({
    "skills": ["math"],
    "router": {"max_message_chars": 50, "max_tokens_cap": 100, "route_timeout_s": 0.2},
    "experts": [{"name": "solo", "model": "m"}],
})  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0 - 1_700_000_000.0 % 60  # start of a minute

    def __call__(self) -> float:
        return self.now


def make(keys: list[ApiKey] | None = None, limiter=None, clock=None, slow_route: bool = False):
    from router import RoutingDecision

    async def route(text, model):
        if slow_route:
            await asyncio.sleep(5)
        return RoutingDecision(model, ["solo"], [], None, None)

    # 'solo' answers 'hello', then an empty "stop" delta: 11 + 7 = 18 tokens per answer.
    solo = FakeExpert("solo", "hello", prompt_tokens=11, completion_tokens=7)
    service = Pipeline(REGISTRY, route, {"solo": solo}, Observer())
    auth = Authenticator(keys, limiter or InMemoryLimiter(), clock or Clock()) if keys else None
    return TestClient(create_api(service, auth=auth))


def key(name="alice", token=ALICE, **kw) -> ApiKey:
    return ApiKey(name=name, digest=hash_key(token), **kw)


def chat(client, token: str | None = None, stream: bool = False, **body):
    headers = {"authorization": f"Bearer {token}"} if token else {}
    body = {"model": "auto", "stream": stream,
            "messages": [{"role": "user", "content": SECRET_PROMPT}]} | body  # fmt: skip
    return client.post("/v1/chat/completions", json=body, headers=headers)


def assert_openai_error(r, status: int, code: str) -> None:
    assert r.status_code == status
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code


# -- keys -------------------------------------------------------------------------------------


def test_keys_come_from_file_and_environment_and_are_kept_hashed(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text(
        f"keys:\n  - {{name: alice, key: {ALICE}, requests_per_minute: 5}}\n"
        f"  - {{name: ops, sha256: {hash_key(ADMIN)}, admin: true}}\n"
    )
    env = {"QUORUM_API_KEYS_FILE": str(path), "QUORUM_API_KEYS": "bob=sk-bob-0123456789abcd"}
    keys = {k.name: k for k in load_keys(AuthConfig(requests_per_minute=60), env)}
    assert set(keys) == {"alice", "ops", "bob"}
    assert keys["alice"].digest == hash_key(ALICE) and keys["alice"].requests_per_minute == 5
    assert keys["ops"].admin and not keys["bob"].admin and keys["bob"].requests_per_minute == 60
    assert ALICE not in repr(keys) and ALICE not in json.dumps([k.to_dict() for k in keys.values()])


def test_no_keys_means_access_control_off():
    assert load_keys(AuthConfig(), {}) == []
    assert build_authenticator([]) is None
    assert chat(make()).status_code == 200  # the embedded default: any api_key works


def test_a_bad_key_file_names_the_problem_without_echoing_the_key(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text(f"keys:\n  - {{name: alice, key: {ALICE}, colour: red}}\n")
    with pytest.raises(RegistryError) as err:
        load_keys(AuthConfig(keys_file=str(path)), {})
    assert "colour" in err.value.message and ALICE not in err.value.message
    with pytest.raises(RegistryError, match="not found"):
        load_keys(AuthConfig(keys_file=str(tmp_path / "none.yaml")), {})
    with pytest.raises(RegistryError, match="unique"):
        load_keys(AuthConfig(), {"QUORUM_API_KEYS": "a=sk-x-0123456789abcdef,a=sk-y-0123456789"})


# -- 401 / 403 --------------------------------------------------------------------------------


def test_missing_or_wrong_key_is_401_and_a_valid_one_passes():
    client = make([key()])
    r = chat(client)
    assert_openai_error(r, 401, "invalid_api_key")
    assert r.headers["www-authenticate"] == "Bearer"
    assert_openai_error(chat(client, "sk-wrong-0123456789abcdef"), 401, "invalid_api_key")
    assert chat(client, ALICE).status_code == 200
    ok = client.post("/v1/chat/completions", headers={"x-api-key": ALICE}, json={
        "model": "auto", "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    assert ok.status_code == 200
    assert client.get("/health").status_code == 200  # open
    assert client.get("/openapi.json").status_code == 200
    assert_openai_error(client.get("/v1/models"), 401, "invalid_api_key")


def test_admin_endpoints_need_an_admin_key():
    client = make([key(), key("ops", ADMIN, admin=True)])
    assert_openai_error(client.get("/admin/routing/x"), 401, "invalid_api_key")
    assert_openai_error(
        client.get("/admin/routing/x", headers={"authorization": f"Bearer {ALICE}"}),
        403, "admin_key_required",
    )  # fmt: skip
    r = client.get("/admin/routing/x", headers={"authorization": f"Bearer {ADMIN}"})
    assert r.status_code not in (401, 403)  # admitted (this app keeps no audit: 404)


# -- 429 --------------------------------------------------------------------------------------


def test_rate_limit_is_per_key_per_minute_with_retry_after():
    clock = Clock()
    client = make([key(requests_per_minute=2), key("bob", "sk-bob-0123456789abcd",
                                                   requests_per_minute=2)], clock=clock)  # fmt: skip
    assert chat(client, ALICE).status_code == 200
    assert chat(client, ALICE).status_code == 200
    r = chat(client, ALICE)
    assert_openai_error(r, 429, "rate_limit_exceeded")
    assert r.json()["error"]["type"] == "rate_limit_error"
    assert int(r.headers["retry-after"]) == 60
    assert chat(client, "sk-bob-0123456789abcd").status_code == 200  # other keys unaffected
    clock.now += 60
    assert chat(client, ALICE).status_code == 200  # next window


def test_token_budget_counts_prompt_and_completion_tokens_streamed_or_not():
    client = make([key(tokens_per_day=40)])
    assert chat(client, ALICE).status_code == 200  # 18 tokens
    r = chat(client, ALICE, stream=True)  # 36
    assert r.status_code == 200 and "[DONE]" in r.text
    assert chat(client, ALICE).status_code == 200  # 36 < 40 → admitted, 54
    r = chat(client, ALICE)
    assert_openai_error(r, 429, "insufficient_quota")
    assert "54 tokens" in r.json()["error"]["message"]


class FakeRedis:
    """The few commands RedisLimiter uses; `down` makes every call fail like a dead server."""

    def __init__(self) -> None:
        self.data: dict[str, int] = {}
        self.down = False

    def _check(self):
        if self.down:
            raise redis.ConnectionError("connection refused")

    def pipeline(self, transaction=True):
        fake, ops = self, []

        class Pipe:
            def incr(self, name):
                ops.append(("incrby", name, 1))

            def incrby(self, name, n):
                ops.append(("incrby", name, n))

            def expire(self, name, ttl):
                ops.append(("expire", name, ttl))

            def execute(self):
                fake._check()
                out = []
                for op, name, n in ops:
                    if op == "incrby":
                        fake.data[name] = fake.data.get(name, 0) + n
                        out.append(fake.data[name])
                    else:
                        out.append(True)
                return out

        return Pipe()

    def get(self, name):
        self._check()
        return self.data.get(name)


def test_redis_counters_are_shared_and_fall_back_to_memory_while_redis_is_down():
    fake = FakeRedis()
    clock = Clock()
    a = make([key(requests_per_minute=3)], RedisLimiter(fake), clock)
    b = make([key(requests_per_minute=3)], RedisLimiter(fake), clock)  # a second ingress replica
    assert chat(a, ALICE).status_code == 200 and chat(b, ALICE).status_code == 200
    window = int(clock.now // 60)
    assert fake.data[f"quorum:ratelimit:alice:{window}"] == 2
    fake.down = True
    assert chat(a, ALICE).status_code == 200  # still served, counted in process
    fake.down = False
    assert chat(a, ALICE).status_code == 200
    assert chat(b, ALICE).status_code == 429  # 4th in Redis's count for this window


# -- limits -----------------------------------------------------------------------------------


def test_message_length_and_max_tokens_caps_are_400_with_the_limit():
    client = make()
    r = chat(client, messages=[{"role": "user", "content": "x" * 51}])
    assert_openai_error(r, 400, "message_too_long")
    assert "at most 50" in r.json()["error"]["message"]
    r = chat(client, max_tokens=101)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    assert chat(client, max_tokens=100).status_code == 200


def test_slow_routing_is_a_504_not_a_hang():
    r = chat(make(slow_route=True))
    assert_openai_error(r, 504, "routing_timeout")


def test_no_key_and_no_prompt_text_in_any_log_record(caplog):
    caplog.set_level(logging.DEBUG)
    client = make([key(requests_per_minute=1)])
    chat(client, ALICE)
    chat(client, ALICE)  # 429
    chat(client, "sk-guess-0123456789abcdef")  # 401
    chat(client, ALICE, messages=[{"role": "user", "content": SECRET_PROMPT * 10}])
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "refused" in text  # the refusals are logged...
    for secret in (ALICE, "sk-guess", SECRET_PROMPT):
        assert secret not in text  # ...without keys or prompts
