"""The profiling job with scripted experts: grading, competence, resume, aggregators, publishing."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from experts.answers import AGGREGATE_HEADER
from experts.registry import Expert, Registry
from skills.competence import beta_interval, posterior
from skills.profile import (
    AnswerBackend,
    ExpertAnswer,
    ExpertSession,
    ProfileConfig,
    main,
    run_profile,
)
from skills.store import InMemoryStateStore
from skills.validation import (
    ValidationItem,
    ValidationSet,
    load_validation_set,
    write_validation_set,
)

SKILLS = ["math", "law"]


def _registry(smart_prior: float = 0.5) -> Registry:
    return Registry(
        skills=SKILLS,
        experts=[
            Expert(name="mathy", model="m", skills={"math": smart_prior}, default_competence=0.5),
            Expert(name="lawyer", model="l", default_competence=0.5, can_aggregate=True),
        ],
    )


def _items() -> list[ValidationItem]:
    items = [ValidationItem(id=f"m{i}", prompt=f"math {i}", reference="A", skills=["math"],
                            grader_args={"choices": "ABCD"}) for i in range(6)]  # fmt: skip
    items += [ValidationItem(id=f"l{i}", prompt=f"law {i}", reference="B", skills=["law"],
                             grader_args={"choices": "ABCD"}) for i in range(4)]  # fmt: skip
    return items


def _data(items: list[ValidationItem]) -> ValidationSet:
    return ValidationSet(items=items, source="test", digest="d" * 64)


class Scripted(AnswerBackend):
    """`mathy` always answers A (right on math), `lawyer` always B (right on law). As aggregator,
    `lawyer` copies the first proposed answer. Records every call; can fail after N answers."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.opened: list[str] = []
        self.asked: list[tuple[str, str]] = []
        self.fail_after = fail_after

    def open(self, expert: Expert, config: ProfileConfig) -> ExpertSession:
        self.opened.append(expert.name)
        backend = self

        class Session(ExpertSession):
            def answer(self, conversations) -> Iterator[ExpertAnswer]:
                for i in reversed(range(len(conversations))):  # out of order, like vLLM
                    if backend.fail_after is not None and len(backend.asked) >= backend.fail_after:
                        raise KeyboardInterrupt
                    text = conversations[i][-1]["content"]
                    backend.asked.append((expert.name, text))
                    if AGGREGATE_HEADER in text:
                        yield ExpertAnswer(i, text.split("Expert 1: ")[1][0])
                    else:
                        yield ExpertAnswer(i, "A" if expert.name == "mathy" else "B. because")

        return Session()


def test_competence_is_a_beta_posterior_around_the_registry_prior(tmp_path):
    store = InMemoryStateStore()
    profile = run_profile(_registry(), _data(_items()), Scripted(), tmp_path, store=store,
                          config=ProfileConfig(prior_strength=2.0, aggregate_items=0, progress=False))  # fmt: skip
    mathy, lawyer = profile["experts"]["mathy"], profile["experts"]["lawyer"]
    # 6/6 on math with prior 0.5 x 2 pseudo-counts: (1 + 6) / (2 + 6).
    assert mathy["skills"]["math"]["competence"] == pytest.approx(7 / 8, abs=1e-4)
    assert mathy["skills"]["math"]["n"] == 6
    assert mathy["skills"]["law"]["competence"] == pytest.approx(1 / 6, abs=1e-4)
    assert lawyer["skills"]["law"]["competence"] == pytest.approx(5 / 6, abs=1e-4)
    assert mathy["global"]["competence"] == pytest.approx(7 / 12, abs=1e-4)
    assert mathy["global"]["share"] + lawyer["global"]["share"] == pytest.approx(1.0, abs=1e-3)
    lo, hi = mathy["skills"]["math"]["ci95"]
    assert lo < 7 / 8 < hi <= 1.0
    assert store.current_profile() == profile
    assert json.loads((tmp_path / "profile.json").read_text()) == profile


def test_a_strong_prior_needs_more_evidence():
    weak, strong = posterior(0.1, 2, 4, 4), posterior(0.1, 20, 4, 4)
    assert strong["competence"] < weak["competence"]
    assert strong["ci95"][1] - strong["ci95"][0] < weak["ci95"][1] - weak["ci95"][0]


def test_beta_interval_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for a, b in [(1, 1), (0.2, 1.8), (7, 1), (30.5, 12.25)]:
        lo, hi = beta_interval(a, b)
        assert lo == pytest.approx(stats.beta.ppf(0.025, a, b), abs=1e-4)
        assert hi == pytest.approx(stats.beta.ppf(0.975, a, b), abs=1e-4)


def test_interrupted_job_resumes_without_redoing_answers(tmp_path):
    data = _data(_items())
    config = ProfileConfig(aggregate_items=0, progress=False)
    first = Scripted(fail_after=7)
    with pytest.raises(KeyboardInterrupt):
        run_profile(_registry(), data, first, tmp_path, config=config)
    saved = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(saved) == 7  # each answer was written the moment it came back
    with (tmp_path / "results.jsonl").open("a") as f:
        f.write('{"kind": "answer", "exp')  # a write cut short by the interruption
    second = Scripted()
    profile = run_profile(_registry(), data, second, tmp_path, config=config)
    assert len(second.asked) == 2 * len(data.items) - 7
    assert profile["job"]["new_answers"] == 2 * len(data.items) - 7
    assert profile["experts"]["mathy"]["skills"]["math"]["n"] == 6
    # A third run has nothing to do and loads no engine at all.
    third = Scripted()
    run_profile(_registry(), data, third, tmp_path, config=config)
    assert third.opened == [] and third.asked == []


def test_a_changed_item_is_asked_again(tmp_path):
    items = _items()
    config = ProfileConfig(aggregate_items=0, progress=False)
    run_profile(_registry(), _data(items), Scripted(), tmp_path, config=config)
    items[0] = items[0].model_copy(update={"prompt": "math 0, reworded"})
    again = Scripted()
    run_profile(_registry(), _data(items), again, tmp_path, config=config)
    assert sorted(again.asked) == [("lawyer", "math 0, reworded"), ("mathy", "math 0, reworded")]


def test_aggregator_synthesises_the_other_experts_answers(tmp_path):
    data = _data(_items())
    backend = Scripted()
    profile = run_profile(_registry(), data, backend, tmp_path,
                          config=ProfileConfig(aggregate_items=8, progress=False))  # fmt: skip
    # Non-aggregators first, so the aggregator's engine is loaded once for both phases.
    assert backend.opened == ["mathy", "lawyer"]
    prompts = [t for n, t in backend.asked if AGGREGATE_HEADER in t]
    assert len(prompts) == 8 and all(n == "lawyer" for n, t in backend.asked if t in prompts)
    assert "Expert 1: A" in prompts[0]
    agg = profile["experts"]["lawyer"]["aggregator"]
    # It copies mathy: right on the 6 math items, wrong on the 2 law items of the first 8.
    assert (agg["correct"], agg["n"]) == (6, 8)
    assert agg["best_single_accuracy"] == pytest.approx(6 / 8)
    assert profile["experts"]["mathy"]["aggregator"] is None
    assert profile["aggregator"] == "lawyer"


def test_versions_differ_between_runs_with_different_results(tmp_path):
    config = ProfileConfig(aggregate_items=0, progress=False)
    a = run_profile(_registry(), _data(_items()), Scripted(), tmp_path / "a", config=config)
    b = run_profile(_registry(0.9), _data(_items()), Scripted(), tmp_path / "b", config=config)
    assert a["version"] != b["version"] and a["version"] < b["version"]


def test_cli_runs_with_an_injected_backend_and_store(tmp_path, capsys):
    path = tmp_path / "set.jsonl"
    write_validation_set(_items(), path)
    store = InMemoryStateStore()
    argv = ["--data", str(path), "--out", str(tmp_path / "out"), "--no-progress"]
    registry = tmp_path / "reg.yaml"
    registry.write_text(json.dumps(_registry().model_dump(mode="json")))  # JSON is YAML
    code = main([*argv, "--registry", str(registry)], backend=Scripted(), store=store)
    assert code == 0
    assert store.current_profile()["experts"]["mathy"]["skills"]["math"]["n"] == 6
    assert "mathy" in capsys.readouterr().out


def test_cli_rejects_items_with_skills_outside_the_registry(tmp_path, capsys):
    path = tmp_path / "set.jsonl"
    write_validation_set(
        [ValidationItem(id="x", prompt="q", reference="A", skills=["cooking"])], path
    )
    registry = tmp_path / "reg.yaml"
    registry.write_text(json.dumps(_registry().model_dump(mode="json")))
    assert main(["--data", str(path), "--registry", str(registry)], backend=Scripted()) == 2
    assert "skill 'cooking' is not in the registry's skills" in capsys.readouterr().err


def test_load_round_trip_of_the_scripted_items(tmp_path):
    write_validation_set(_items(), tmp_path / "s.jsonl")
    assert load_validation_set(tmp_path / "s.jsonl", skills=SKILLS).items == _items()


def test_concurrent_experts_give_the_same_profile(tmp_path):
    data = _data(_items())
    one = run_profile(_registry(), data, Scripted(), tmp_path / "one",
                      config=ProfileConfig(aggregate_items=4, progress=False))  # fmt: skip
    backend = Scripted()
    two = run_profile(_registry(), data, backend, tmp_path / "two",
                      config=ProfileConfig(aggregate_items=4, concurrency=2, progress=False))  # fmt: skip
    assert two["experts"] == one["experts"]
    # The aggregator ran beside the others: its aggregations ran in the same session when the
    # others' answers were in by then, else in a second one.
    assert sorted(set(backend.opened)) == ["lawyer", "mathy"] and len(backend.opened) <= 3


def test_openai_backend_experts_are_asked_over_http():
    import httpx

    from skills.backends import HTTPSession

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if "boom" in body["messages"][-1]["content"]:
            return httpx.Response(500, text="overloaded")
        assert body["max_tokens"] == 4 and body["temperature"] == 0.0
        chunk = {"choices": [{"delta": {"content": "B."}, "finish_reason": "stop"}]}
        return httpx.Response(200, text=f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n")

    expert = Expert(name="remote", model="m", backend="openai", base_url="http://x/v1")
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    session = HTTPSession(expert, ProfileConfig(max_tokens=4), http)
    convs = [[{"role": "user", "content": "q"}], [{"role": "user", "content": "boom"}]]
    got = sorted(session.answer(convs), key=lambda a: a.index)
    session.close()
    assert got[0] == ExpertAnswer(0, "B.")
    assert got[1].text == "" and "HTTP 500" in got[1].error
