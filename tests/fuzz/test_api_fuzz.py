"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis + hypothesis).

The app is the contract tests' app (tests/fuzz/contract_app.py): the real FastAPI app in process
with the batch, feedback and compat routes, real router logic (keyword encoder), scripted experts,
access control on. Schemathesis generates requests for every operation in /openapi.json (valid
and invalid bodies, both); the property is that none gets a 5xx and the service still answers
afterwards. The number of generated cases is counted; with `QUORUM_FUZZ_REPORT=<file>` it is
written there as JSON (`python -m benchmarks.fuzz` records it in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="pip install 'quorum[test]'")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from tests.fuzz.contract_app import ADMIN_KEY as KEY  # noqa: E402
from tests.fuzz.contract_app import build_app  # noqa: E402

EXAMPLES = int(os.environ.get("QUORUM_FUZZ_EXAMPLES", "100"))  # per operation and mode
MODELS = ["auto", "mathematician", "jurist"]
COUNTS: Counter[str] = Counter()


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    app = build_app(tmp_path_factory.mktemp("batches"))
    yield app
    report = os.environ.get("QUORUM_FUZZ_REPORT")
    if report:
        Path(report).write_text(json.dumps({"cases": sum(COUNTS.values()), "by_status": dict(
            COUNTS)}, indent=2))  # fmt: skip


def operations(app) -> list:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


def cases(op, mode: GenerationMode):
    """`op`'s generated cases; for valid bodies, half of them name a model that exists (random
    strings would almost all be 404s and never reach an expert)."""
    strategy = op.as_strategy(generation_mode=mode)
    if mode is not GenerationMode.POSITIVE:
        return strategy

    def known_model(pair):
        case, model = pair
        if model is not None and isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = model
        return case

    return st.tuples(strategy, st.sampled_from([*MODELS, None, None, None])).map(known_model)


def has_body(op) -> bool:
    """Whether `op` takes a body: the only input here that a negative case can get wrong (the one
    path parameter is any string)."""
    return bool(op.definition.raw.get("requestBody"))


def fuzz(op, mode: GenerationMode, headers: dict, check, examples: int) -> None:
    @given(case=cases(op, mode))
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def run(case):
        response = case.call(headers=headers)
        COUNTS[f"{'key' if headers else 'no-key'} {mode.value} {op.label} -> "
               f"{response.status_code}"] += 1  # fmt: skip
        case.validate_response(response, checks=[not_a_server_error])
        check(op, response)

    run()


# Driven through hypothesis directly (schemathesis's pytest plugin does not run under pytest 9).
@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
def test_no_request_gets_a_server_error(api, mode):
    ops = operations(api)
    assert {op.label for op in ops} >= {"POST /v1/chat/completions", "POST /v1/route"}
    for op in ops:
        if mode is GenerationMode.NEGATIVE and not has_body(op):
            continue  # no invalid case exists
        fuzz(op, mode, {"authorization": f"Bearer {KEY}"}, lambda op, r: None, EXAMPLES)


def test_without_a_key_everything_but_health_and_docs_is_401(api):
    def refused(op, response):
        assert response.status_code == (200 if op.path in ("/health", "/livez", "/readyz") else 401)

    for op in operations(api):
        fuzz(op, GenerationMode.POSITIVE, {}, refused, max(10, EXAMPLES // 5))


def test_the_service_still_answers_after_fuzzing(api):
    from fastapi.testclient import TestClient

    client = TestClient(api)
    r = client.post("/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"},
                    json={"model": "auto", "messages": [{"role": "user", "content": "solve x"}]})  # fmt: skip
    assert r.status_code == 200 and r.json()["model"] == "mathematician"
    assert sum(COUNTS.values()) > 0
