"""The loop of issue 12 on a real `quorum serve` (Ray Serve, MiniLM, Redis): the service routes
with the registry's priors, collects feedback, `quorum fit-policy --feedback --publish` fits a
policy on outcomes + feedback, and the running service switches to it within seconds, routing
where the outcomes say. Experts are `openai`-backend experts on a stub server (no LLM needed)."""

import json
import subprocess
import sys
import time

import httpx
import pytest

from tests.integration.conftest import ROOT, free_port, start_quorum, stop
from tests.integration.redis_fixture import redis_server, redis_url  # noqa: F401 (fixtures)
from tests.integration.stub_backend import serve_stub

pytestmark = pytest.mark.integration

LAW = [
    "Is a promise made without consideration enforceable as a contract in court?",
    "Can a tenant sue the landlord for breach of the lease agreement?",
    "What must a plaintiff prove to win a negligence lawsuit?",
    "Is evidence obtained without a warrant admissible at a criminal trial?",
    "When does a verbal agreement become a legally binding contract?",
    "Which court has jurisdiction over a dispute between citizens of two states?",
]
MATH = [
    "Solve the quadratic equation x^2 - 5x + 6 = 0 for x.",
    "What is the derivative of x^3 + 2x with respect to x?",
    "Compute the integral of 2x from 0 to 3.",
    "Find the sum of the first 20 positive integers.",
    "What is the probability of rolling two sixes with two fair dice?",
    "Solve the system 2x + y = 7 and x - y = 2.",
]
ASK_LAW = "Can a court enforce an oral contract between two business partners?"
ASK_MATH = "What is the second derivative of x^4 - 3x^2 with respect to x?"


def registry(base_url: str) -> str:
    # The priors say `dear` is better at everything and cost is ignored (cost_weight 0): without
    # a fitted policy every query goes to `dear`.
    return f"""
router: {{cost_weight: 0.0}}
experts:
  - {{name: cheap, backend: openai, base_url: "{base_url}", model: cheap,
     default_competence: 0.3, cost: {{input_per_1m: 1, output_per_1m: 1}}}}
  - {{name: dear, backend: openai, base_url: "{base_url}", model: dear,
     default_competence: 0.8, cost: {{input_per_1m: 10, output_per_1m: 10}}}}
"""


def route(port: int, text: str) -> dict:
    body = {"model": "auto", "messages": [{"role": "user", "content": text}]}
    r = httpx.post(f"http://127.0.0.1:{port}/v1/route", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
def stub():
    server, counts = serve_stub()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", counts
    server.shutdown()


def test_feedback_refit_publish_and_the_service_switches_policy(tmp_path, redis_url, stub):  # noqa: F811
    base_url, counts = stub
    reg = tmp_path / "registry.yaml"
    reg.write_text(registry(base_url))
    # Outcomes: `cheap` answers law right and math wrong; `dear` the opposite.
    lines = [{"id": f"law{i}", "category": "law", "prompt": p,
              "outcomes": {"cheap": 1, "dear": 0}} for i, p in enumerate(LAW)]  # fmt: skip
    lines += [{"id": f"math{i}", "category": "math", "prompt": p,
               "outcomes": {"cheap": 0, "dear": 1}} for i, p in enumerate(MATH)]  # fmt: skip
    outcomes = tmp_path / "outcomes.jsonl"
    outcomes.write_text("".join(json.dumps(r) + "\n" for r in lines))

    port = free_port()
    proc, log = start_quorum(port, "--registry", str(reg), "--redis-url", redis_url)
    try:
        before = [route(port, ASK_LAW), route(port, ASK_MATH)]
        assert [d["experts"] for d in before] == [["dear"], ["dear"]]
        assert {d["recruitment"]["competence_source"] for d in before} == {"registry"}

        # A routed answer, and the user's verdict on it: `dear` got this law question wrong.
        chat = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60,
                          json={"model": "auto", "messages": [{"role": "user",
                                                               "content": ASK_LAW}]})  # fmt: skip
        assert chat.status_code == 200, chat.text
        assert chat.json()["choices"][0]["message"]["content"] == "dear answers."
        feedback = httpx.post(f"http://127.0.0.1:{port}/v1/feedback", timeout=30,
                              json={"id": chat.json()["id"], "score": 0.0})  # fmt: skip
        assert feedback.status_code == 200, feedback.text

        fit = subprocess.run(
            [sys.executable, "-m", "serving.cli", "fit-policy", "--kind", "knn", "--registry",
             str(reg), "--outcomes", str(outcomes), "--feedback", "--publish", "--redis-url",
             redis_url, "--out", str(tmp_path / "policy.npz")],
            cwd=ROOT, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert fit.returncode == 0, fit.stderr
        manifest = json.loads(fit.stdout)
        assert manifest["published"] and manifest["fitted_on"]["sources"] == {
            "outcomes": len(lines), "feedback": 1}  # fmt: skip

        source = f"policy:knn@{manifest['version']}"
        deadline = time.monotonic() + 30
        while route(port, ASK_LAW)["recruitment"]["competence_source"] != source:
            assert time.monotonic() < deadline, "the published policy was not picked up in 30 s"
            time.sleep(0.5)
        after_law, after_math = route(port, ASK_LAW), route(port, ASK_MATH)
        assert after_law["experts"] == ["cheap"]  # where the outcomes say `cheap` is right
        assert after_math["experts"] == ["dear"]  # and where they say it is not
        scores = {s["expert"]: s["quality"] for s in after_law["recruitment"]["scores"]}
        assert scores["cheap"] > scores["dear"]
        served_before = counts["cheap"]
        chat = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60,
                          json={"model": "auto", "messages": [{"role": "user",
                                                               "content": ASK_LAW}]})  # fmt: skip
        assert chat.json()["choices"][0]["message"]["content"] == "cheap answers."
        assert counts["cheap"] == served_before + 1
    except AssertionError:
        print(log.read_text()[-3000:])
        raise
    finally:
        stop(proc)
