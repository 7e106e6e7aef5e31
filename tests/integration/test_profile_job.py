"""The must-show: profile the real tiny models, publish to a real Redis, and watch a running router
change its decision without a restart.

What is measured and what is constructed: the first profile is *measured* (both built-in models
answer a 5-question MMLU-Pro slice through vLLM in Ray actors, graded by the multiple-choice grader).
Whether that flips `auto`'s choice depends on what the tiny models happen to get right, so the test
then publishes a second, *hand-built* profile favouring the expert not chosen, and checks the
decision flips. Takes several minutes on 2 CPU cores (two engine loads).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experts.paths import OFFLINE_ENV
from skills.validation import load_validation_set, write_validation_set
from tests.integration.redis_fixture import redis_server, redis_url  # noqa: F401

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
QUESTION = "Solve for x: 3x + 7 = 22. What is the value of x?"


def _profile_cmd(data: Path, out: Path, url: str) -> list[str]:
    return [sys.executable, "-m", "skills.profile", "--data", str(data), "--out", str(out),
            "--redis-url", url, "--max-tokens", "8", "--aggregate-items", "2", "--no-progress"]  # fmt: skip


def _run(cmd: list[str], log: Path) -> tuple[int, str, float]:
    env = os.environ | OFFLINE_ENV | {"VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    log.write_text(proc.stdout + proc.stderr)
    return proc.returncode, proc.stdout, time.perf_counter() - started


def _registry_with_a_head(tmp_path: Path):
    """The embedded default registry; if the shipped skill head (`python -m router.train`) is not
    built in this checkout, a small logreg head (20 questions per category) stands in for it."""
    from experts.registry import load_registry, parse_registry
    from router.classify import load_head

    registry = load_registry(None)
    config = registry.router.classifier
    try:
        load_head("builtin", config.kind, config.encoder)
        return registry
    except FileNotFoundError:
        pass
    from router.encoders import make_encoder
    from router.train import read_rows, train_head

    per_category: dict[str, list[dict]] = {}
    for row in read_rows():
        per_category.setdefault(row["category"], []).append(row)
    rows = [r for group in per_category.values() for r in group[:20]]
    encoder = make_encoder(config.encoder)
    head, metrics = train_head("logreg", rows, encoder, skills=registry.skills)
    (tmp_path / "head.json").write_text(head.to_json(**metrics))
    data = registry.model_dump(mode="json")
    data["router"]["classifier"] = {"kind": "logreg", "artifact": str(tmp_path / "head.json"),
                                    "encoder": config.encoder}  # fmt: skip
    return parse_registry(data)


@pytest.mark.timeout(1800)  # two vLLM engine loads; ~7 min on 2 idle cores, far more when shared
def test_measured_profile_reaches_the_live_router_through_redis(redis_url, tmp_path):  # noqa: F811
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'quorum[cpu]')")
    from serving.deployments import build_router
    from skills.redis_store import RedisStateStore

    registry = _registry_with_a_head(tmp_path)
    router = build_router(registry, RedisStateStore.from_url(redis_url))  # stays up throughout
    before = router.route(QUESTION, "auto")
    assert before.recruitment["competence_source"] == "registry"
    # Equal priors: `auto` takes the cheaper expert.
    assert before.experts == ["smollm2-135m"]

    # One question per category of the bundled tiny set: 5 items x 2 experts (+2 aggregations).
    items = load_validation_set(ROOT / "skills" / "data" / "tiny_profile_set.jsonl").items
    data = tmp_path / "slice.jsonl"
    write_validation_set(list({it.skills[0]: it for it in reversed(items)}.values()), data)
    out = tmp_path / "profile"
    code, stdout, seconds = _run(_profile_cmd(data, out, redis_url), tmp_path / "run1.log")
    assert code == 0, (tmp_path / "run1.log").read_text()[-4000:]
    measured = json.loads((out / "profile.json").read_text())
    print(f"\nprofiling run: {seconds:.0f} s\n{stdout}")
    for name in ("smollm2-135m", "gemma3-270m"):
        skills = measured["experts"][name]["skills"]
        assert set(skills) == {"biology", "economics", "history", "math", "physics"}
        assert all(s["n"] == 1 for s in skills.values())
    assert measured["experts"]["smollm2-135m"]["aggregator"]["n"] == 2

    after = router.route(QUESTION, "auto")  # same router object: no restart
    assert after.recruitment["competence_source"] == f"profile:{measured['version']}"
    competence, _ = router.recruiter.competence()
    math = registry.skills.index("math")
    for i, expert in enumerate(registry.experts):
        assert (
            competence[i, math] == measured["experts"][expert.name]["skills"]["math"]["competence"]
        )

    # Constructed: a profile that makes the expert `auto` did not choose clearly better.
    chosen = after.experts[0]
    other = next(e.name for e in registry.experts if e.name != chosen)
    constructed = {
        "version": measured["version"] + "-constructed",
        "experts": {
            other: {"skills": {s: {"competence": 0.9} for s in registry.skills}},
            chosen: {"skills": {s: {"competence": 0.05} for s in registry.skills}},
        },
    }
    RedisStateStore.from_url(redis_url).publish_profile(constructed)
    flipped = router.route(QUESTION, "auto")
    for label, d in [("before", before), ("measured", after), ("constructed", flipped)]:
        scores = ", ".join(f"{x['expert']} {x['quality']:.3f}" for x in d.recruitment["scores"])
        print(f"{label:<12} -> {d.experts[0]:<14} ({d.recruitment['competence_source']}; {scores})")
    assert flipped.experts == [other]
    assert flipped.recruitment["competence_source"] == f"profile:{constructed['version']}"
    assert RedisStateStore.from_url(redis_url).profile_versions() == [
        measured["version"],
        constructed["version"],
    ]

    # Rerunning the job resumes from its results file: nothing is asked again, no engine loads.
    code, _, seconds = _run(_profile_cmd(data, out, redis_url), tmp_path / "run2.log")
    assert code == 0, (tmp_path / "run2.log").read_text()[-4000:]
    rerun = json.loads((out / "profile.json").read_text())
    assert rerun["job"]["new_answers"] == 0
    assert rerun["experts"] == measured["experts"]
    assert "loaded in" not in (tmp_path / "run2.log").read_text()

    # One documented command turns the profile's graded answers into the policy the router serves.
    code, stdout, _ = _run(
        [sys.executable, "-m", "serving.cli", "fit-policy", "--kind", "knn", "--profile-dir",
         str(out), "--data", str(data), "--publish", "--redis-url", redis_url, "--folds", "2",
         "--out", str(tmp_path / "policy.npz")], tmp_path / "fit.log")  # fmt: skip
    assert code == 0, (tmp_path / "fit.log").read_text()[-4000:]
    manifest = json.loads(stdout)
    assert manifest["experts"] == [e.name for e in registry.experts]
    assert manifest["fitted_on"]["sources"] == {"profile": 5, "feedback": 0}
    time.sleep(1.5)  # routers look for a newly published policy once a second
    served = router.route(QUESTION, "auto")
    assert served.recruitment["competence_source"] == f"policy:knn@{manifest['version']}"
    from router.artifact import load_policy

    predicted = load_policy(tmp_path / "policy.npz").policy.predict_quality(
        served.embedding[None, :]
    )[0]
    scores = {s["expert"]: s["quality"] for s in served.recruitment["scores"]}
    for j, name in enumerate(manifest["experts"]):
        assert scores[name] == pytest.approx(predicted[j], abs=1e-4)
