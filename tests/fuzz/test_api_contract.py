"""The published OpenAPI schema is the contract: schemathesis, every check, against the real app.

The app is `create_api` + `install_batches` + `install_feedback` + the compat surfaces
(`/v1/completions`, `/v1/responses`, `/v1/messages`) with a real router and `FakeExpert`s
(`tests/fuzz/contract_app.py`). Schemathesis runs its coverage and fuzzing phases over every
operation in `/openapi.json` with all its checks (the CLI's `--checks all`): no server error, no
undocumented status code, every body as documented (OpenAI's error schema; Anthropic's for
`/v1/messages`), schema-valid requests accepted, schema-violating ones refused, `Allow` on 405s,
401 without a key, ... — once with an admin key and once with none. Any failure fails the test,
listing each failing check with a request that reproduces it.

`QUORUM_CONTRACT_EXAMPLES` (default 25) sets the fuzzing phase's examples per operation;
`QUORUM_CONTRACT_REPORT=<file>` writes the counts as JSON (for benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="pip install 'quorum[test]'")
from schemathesis.checks import load_all_checks  # noqa: E402
from schemathesis.config import SchemathesisConfig  # noqa: E402
from schemathesis.engine import events, from_schema  # noqa: E402

from tests.fuzz.contract_app import ADMIN_KEY, build_app  # noqa: E402

EXAMPLES = int(os.environ.get("QUORUM_CONTRACT_EXAMPLES", "25"))
OPERATIONS = {
    "GET /health", "GET /livez", "GET /readyz", "GET /v1/models", "GET /v1/models/{model}", "POST /v1/chat/completions",
    "POST /v1/completions", "POST /v1/responses", "POST /v1/messages", "POST /v1/messages/count_tokens", "POST /v1/route",
    "GET /admin/scheduler", "GET /admin/routing/{request_id}", "POST /v1/feedback",
    "POST /v1/files", "GET /v1/files", "GET /v1/files/{file_id}",
    "GET /v1/files/{file_id}/content", "DELETE /v1/files/{file_id}", "POST /v1/batches",
    "GET /v1/batches", "GET /v1/batches/{batch_id}", "POST /v1/batches/{batch_id}/cancel",
}  # fmt: skip


def unobservable(label: str, check: str, message: str) -> bool:
    """A multipart file part is bytes whatever the generator meant: a `file` "mutated" to an
    integer or an object reaches the server as the bytes of its text, a valid file. Only a
    `negative_data_rejection` failure whose sole violation is `file`'s type is excused."""
    violations = [line for line in message.splitlines() if "violates" in line]
    return (label == "POST /v1/files" and check == "negative_data_rejection"
            and len(violations) == 1 and "at /properties/file (was string" in violations[0])  # fmt: skip


def inexpressible(check: str, status: int, body: bytes) -> bool:
    """A 400 for one of the rules JSON Schema cannot state, excused from
    `positive_data_acceptance` only (the 400 is documented, so `status_code_conformance` still
    holds, and its body is still checked against the error schema):
    - a named `tool_choice` must name one of the request's `tools` (a reference from one value of
      the body to another);
    - Anthropic's `/v1/messages`: the message limit (router.max_messages) counts chat messages
      after translation, where each `tool_result` block is a message of its own (a count over
      nested items of several kinds; the schema bounds `messages` itself);
    - rules on the last message only (JSON Schema has no keyword for an array's last item): chat's
      `continue_final_message` needs it to be the assistant's, and an Anthropic prefill (a final
      assistant message) may not end with whitespace."""
    if check != "positive_data_acceptance" or status != 400:
        return False
    try:
        data = json.loads(body)
        message = data["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return False
    if "tool_choice" in message and "is not in 'tools'" in message:
        return True
    if message.startswith("'continue_final_message' needs the last message to be the assistant's"):
        return True
    if message == "final assistant content cannot end with trailing whitespace":
        return True
    return (
        data.get("type") == "error"
        and re.fullmatch(r"'messages' has \d+ entries; at most \d+ are allowed", message)
        is not None
    )


def run_schemathesis(app, headers: dict | None) -> tuple[Counter, list[str], set[str]]:
    """(cases by phase, failures as readable lines, operations tested)."""
    load_all_checks()
    config = SchemathesisConfig()
    config.update(seed=16, max_failures=None)
    config.output.sanitization.update(enabled=False)
    project = config.projects.override
    project.update(headers=headers, continue_on_failure=True)
    project.phases.update(phases=["coverage", "fuzzing"])
    project.checks.update(included_check_names=["all"])
    # 413 is how this service refuses a body over router.max_body_bytes: a byte count of the
    # whole body, which no JSON Schema keyword states (the status is documented on each
    # operation). A generated body that large is refused (negative) or may be (positive) with it.
    for check in (project.checks.negative_data_rejection, project.checks.positive_data_acceptance):
        check.expected_statuses = [*check.expected_statuses, "413"]
    project.generation.update(max_examples=EXAMPLES, codec="utf-8")
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    cases: Counter = Counter()
    failures: list[str] = []
    tested: set[str] = set()
    for event in from_schema(schema).execute():
        if isinstance(event, (events.NonFatalError, events.FatalError)):
            failures.append(f"engine error: {event!r}")
        if not isinstance(event, events.ScenarioFinished):
            continue
        recorder = event.recorder
        tested.add(recorder.label)
        cases[event.phase.value] += len(recorder.cases)
        for case_id, checks in recorder.checks.items():
            for check in checks:
                if check.failure_info is None:
                    continue
                response = recorder.interactions[case_id].response
                failure = check.failure_info.failure
                if unobservable(recorder.label, check.name, failure.message):
                    continue
                if response is not None and inexpressible(
                    check.name, response.status_code, response.content
                ):
                    continue
                got = (
                    "no response"
                    if response is None
                    else (f"{response.status_code} {response.content[:300]!r}")
                )
                failures.append(f"{recorder.label}: {check.name}: "
                                f"{check.failure_info.failure.title} (got {got})\n"
                                f"{check.failure_info.failure.message}\n"
                                f"{check.failure_info.code_sample}")  # fmt: skip
    return cases, failures, tested


@pytest.mark.parametrize("key", ["admin-key", "no-key"])
def test_the_app_keeps_its_published_contract(key, tmp_path):
    app = build_app(tmp_path / "batches")
    headers = {"authorization": f"Bearer {ADMIN_KEY}"} if key == "admin-key" else None
    cases, failures, tested = run_schemathesis(app, headers)
    report = os.environ.get("QUORUM_CONTRACT_REPORT")
    if report:
        path = Path(report)
        data = json.loads(path.read_text()) if path.exists() else {}
        data[key] = {"cases": dict(cases), "failures": len(failures), "examples": EXAMPLES}
        path.write_text(json.dumps(data, indent=2))
    assert tested >= OPERATIONS, f"not tested: {sorted(OPERATIONS - tested)}"
    assert cases["coverage"] > 0 and cases["fuzzing"] > 0, cases
    assert not failures, f"{len(failures)} contract failure(s):\n\n" + "\n\n".join(
        dict.fromkeys(f[:2000] for f in failures)
    )
