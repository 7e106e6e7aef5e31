"""Outcome data beyond MMLU-Pro: fractional scores, missing outcomes, no gold answers, categories
that are dataset names, prompts in several languages, and bad rows that fail with file:line.

The dataset is synthetic and written by the tests; the HashingEncoder needs no model.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from router.policies import POLICIES, PredictorPolicy, make_policy
from skills.outcomes import OutcomesError, OutcomeTable, load_outcomes, parse_question
from skills.routing_eval import main

POOL = ["small", "mid", "big"]
#: Mean score per category and model. The best model differs per category; `big` is best overall.
SCORES = {
    "gsm8k-ja": {"small": 0.25, "mid": 0.85, "big": 0.7},
    "wmt-de": {"small": 0.9, "mid": 0.5, "big": 0.8},
    "humaneval": {"small": 0.2, "mid": 0.4, "big": 0.65},
    "default": {"small": 0.5, "mid": 0.5, "big": 0.5},  # rows written without a category
}
PROMPTS = {
    "gsm8k-ja": "りんご が {i} 個 あります 。 半分 食べる と 何 個 残り ます か ？",
    "wmt-de": "Übersetze ins Englische : Der Hund läuft {i} Mal um das große Haus .",
    "humaneval": "def add_{i}(a, b): return the sum of a and b in python code",
    "default": "Какая столица Франции ? вариант {i}",
}
MODELS_YAML = {
    "models": {"small": {"active_b": 1}, "mid": {"active_b": 3}, "big": {"active_b": 10}},
    "reference_pool": POOL,
}


def rows(n: int, offset: int = 0, *, gaps: bool = True) -> list[dict]:
    """n rows cycling through the categories; `extra` is a model not in models.yaml."""
    out = []
    cats = list(SCORES)
    for i in range(offset, offset + n):
        cat = cats[i % len(cats)]
        outcomes: dict = dict(SCORES[cat]) | {"extra": True}
        if gaps and i % 7 == 3:
            del outcomes["mid"]  # absent: unknown
        if gaps and i % 11 == 5:
            outcomes["big"] = None  # null: unknown
        row = {"id": i, "prompt": PROMPTS[cat].format(i=i), "outcomes": outcomes}
        if cat != "default":
            row["category"] = cat
        out.append(row)
    return out


def write(path: Path, records: list, gz: bool = False) -> Path:
    text = "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                   for r in records)  # fmt: skip
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# -- the format ------------------------------------------------------------------------------------


def test_fractional_bool_null_absent_and_defaults_parse() -> None:
    q = parse_question(
        {"id": 7, "prompt": "Wie spät ist es?", "outcomes": {"a": 0.25, "b": True, "c": None}}
    )
    assert q.id == "7" and q.category == "default" and q.answer is None
    assert q.outcomes == {"a": 0.25, "b": 1.0}  # null: unknown, like an absent model
    assert q.predictions == {}
    table = OutcomeTable.build([q], ["a", "b"])
    assert not table.binary and table.answers.tolist() == [None]


BAD_ROWS = [
    ("{not json", "not valid JSON", "one complete JSON object"),
    ("[1, 2]", "expected a JSON object, got list", "one object per line"),
    ('{"prompt": "p", "outcomes": {}}', "missing field 'id'", "needs 'id', 'prompt'"),
    ('{"id": "a", "outcomes": {}}', "missing field 'prompt'", "needs 'id', 'prompt'"),
    ('{"id": "a", "prompt": "p"}', "missing field 'outcomes'", "needs 'id', 'prompt'"),
    ('{"id": 1.5, "prompt": "p", "outcomes": {}}', "'id' must be a non-empty string", "unique id"),
    ('{"id": "a", "prompt": " ", "outcomes": {}}', "'prompt' must be a non-empty string",
     "the query text"),
    ('{"id": "a", "prompt": "p", "category": 3, "outcomes": {}}',
     "'category' must be a non-empty string", "leave it out ('default')"),
    ('{"id": "a", "prompt": "p", "answer": 42, "outcomes": {}}',
     "'answer' must be a non-empty string", 'quote the gold answer ("42")'),
    ('{"id": "a", "prompt": "p", "outcomes": [1, 0]}', "'outcomes' must be an object",
     '"model-c": null'),
    ('{"id": "a", "prompt": "p", "outcomes": {"m": "yes"}}', "outcome of 'm' is \"yes\" (str)",
     "true/false, or null"),
    ('{"id": "a", "prompt": "p", "outcomes": {"m": 85}}', "outcome of 'm' is 85, outside [0, 1]",
     "divide a percentage by 100"),
    ('{"id": "a", "prompt": "p", "outcomes": {"m": NaN}}', "outcome of 'm' is nan",
     "write null for an unknown outcome"),
    ('{"id": "a", "prompt": "p", "outcomes": {}, "predictions": ["A"]}',
     "'predictions' must be an object", "or leave it out"),
    ('{"id": "a", "prompt": "p", "outcomes": {}, "predictions": {"m": 3}}',
     "prediction of 'm' is 3 (int)", 'as a string ("42") or null'),
]  # fmt: skip


@pytest.mark.parametrize(("line", "what", "fix"), BAD_ROWS)
def test_a_bad_row_fails_with_file_line_what_and_fix(
    tmp_path: Path, line: str, what: str, fix: str
) -> None:
    path = write(tmp_path / "data.jsonl", [rows(1)[0], "", line])
    with pytest.raises(OutcomesError) as info:
        load_outcomes(path)
    message = info.value.message
    assert message.startswith(f"{path}:3: "), message  # blank lines count
    assert what in message and fix in message, message


def test_duplicate_ids_empty_files_and_bad_gzip_say_where(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", [*rows(3), rows(2)[1]])
    with pytest.raises(OutcomesError, match=r"d.jsonl:4: duplicate id '1' \(first at line 2\)"):
        load_outcomes(path)
    with pytest.raises(OutcomesError, match="no records"):
        load_outcomes(write(tmp_path / "e.jsonl", [""]))
    (tmp_path / "f.jsonl.gz").write_text("plain text, not gzip")
    with pytest.raises(OutcomesError, match=r"gzipped only when its name ends in \.gz"):
        load_outcomes(tmp_path / "f.jsonl.gz")


def test_gzip_and_non_english_round_trip(tmp_path: Path) -> None:
    plain = load_outcomes(write(tmp_path / "a.jsonl", rows(20)))
    packed = load_outcomes(write(tmp_path / "a.jsonl.gz", rows(20), gz=True))
    assert plain == packed
    assert {q.category for q in plain} == set(SCORES)
    assert plain[0].prompt.startswith("りんご")


# -- every policy fits fractional scores -----------------------------------------------------------


def clusters(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two well-separated clusters in 6-D; labels 0/1."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    x = rng.normal(0, 0.15, (n, 6))
    x[:, 0] += np.where(labels == 0, 1.0, -1.0)
    return x, labels


def test_every_policy_fits_soft_scores_with_gaps_and_ranks_experts_per_cluster() -> None:
    x, labels = clusters(200)
    rng = np.random.default_rng(1)
    # Expert 0 scores ~0.8 on cluster 0 and ~0.2 on cluster 1; expert 1 the reverse. Only values
    # strictly between 0 and 1, so a fit that rounds scores to 0/1 labels learns nothing.
    noise = rng.choice([-0.1, 0.0, 0.1], size=len(x))
    e0 = np.where(labels == 0, 0.8, 0.2) + noise
    correct = np.stack([e0, 1.0 - e0], axis=1)
    correct[::9, 0] = np.nan
    correct[::13, 1] = np.nan
    cats = ["ja" if c == 0 else "de" for c in labels]
    probe, probe_labels = clusters(40, seed=2)
    for name in POLICIES:
        params = {"n_clusters": 2} if name == "centroid" else {}
        quality = make_policy(name, **params).fit(x, correct, cats).predict_quality(probe)
        assert quality.shape == (40, 2) and np.isfinite(quality).all(), name
        assert ((quality >= 0) & (quality <= 1)).all(), name
        best = quality.argmax(axis=1)
        assert (best == probe_labels).mean() == 1.0, name


def test_predictor_learns_the_expected_score_from_soft_labels() -> None:
    x, labels = clusters(400)
    y = np.where(labels == 0, 0.7, 0.3) + np.random.default_rng(3).choice([-0.1, 0.1], len(x))
    policy = PredictorPolicy(c=100.0).fit(x, y[:, None])
    probe, probe_labels = clusters(100, seed=4)
    q = policy.predict_quality(probe)[:, 0]
    assert q[probe_labels == 0].mean() == pytest.approx(0.7, abs=0.03)
    assert q[probe_labels == 1].mean() == pytest.approx(0.3, abs=0.03)
    # All-fractional scores with one value everywhere: the constant, not a degenerate class.
    flat = PredictorPolicy().fit(x, np.full((len(x), 1), 0.4)).predict_quality(probe)
    assert flat == pytest.approx(0.4, abs=1e-3)


def test_predictor_on_binary_outcomes_is_plain_logistic_regression() -> None:
    from sklearn.linear_model import LogisticRegression

    x, labels = clusters(300)
    y = (np.random.default_rng(5).random(len(x)) < np.where(labels == 0, 0.8, 0.3)).astype(float)
    policy = PredictorPolicy(c=1.0).fit(x, y[:, None])
    features = policy._features(x)
    plain = LogisticRegression(C=1.0, max_iter=500).fit(features, y.astype(int))
    np.testing.assert_allclose(
        policy.predict_quality(x)[:, 0], plain.predict_proba(features)[:, 1], atol=1e-4
    )


# -- quorum eval-routing on such data --------------------------------------------------------------


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Path]:
    test = rows(40, offset=1000, gaps=False)
    test[0]["outcomes"]["mid"] = None  # two test rows cannot be scored: dropped
    del test[1]["outcomes"]["small"]
    models = tmp_path / "models.yaml"
    models.write_text(yaml.safe_dump(MODELS_YAML))
    return {
        "train": write(tmp_path / "train.jsonl.gz", rows(400), gz=True),
        "test": write(tmp_path / "test.jsonl", test),
        "models": models,
        "out": tmp_path / "out",
    }


def test_eval_routing_reports_per_category_accuracy_and_a_curve(
    data: dict[str, Path], capsys
) -> None:
    argv = [f"--{k}={v}" for k, v in data.items()]
    assert main([*argv, "--encoder=hash", "--no-cache", "--folds=3"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "fractional outcomes; accuracy per category at λ = 0 (test part):"
    assert table[1].split() == ["category", "n", "big", "oracle", *POLICIES]
    assert table[3].split() == ["gsm8k-ja", "9", "0.7000", "0.8500"] + ["0.8500"] * len(POLICIES)
    assert table[6].endswith("at λ calibrated for 50% cost (test part):")
    report = json.loads((data["out"] / "report.json").read_text())
    assert (data["out"] / "curve.png").stat().st_size > 1000
    assert report["outcome_kind"] == "fractional"
    assert report["categories"] == sorted(SCORES)
    assert report["ignored_models"] == ["extra"]
    assert report["n_test"] == 40 and report["n_test_evaluated"] == 38
    assert "no 'predictions'" in report["multi_expert_skipped"]
    assert report["best_single"]["model"] == "big"

    per_cat = report["per_category"]
    assert per_cat["n_test_evaluated"] == {"default": 10, "gsm8k-ja": 9, "humaneval": 10,
                                           "wmt-de": 9}  # fmt: skip
    for model in POOL:  # the mean score per category of each single model
        assert per_cat["single_models"][model] == {c: s[model] for c, s in SCORES.items()}
    best = {c: max(s.values()) for c, s in SCORES.items()}
    assert per_cat["oracle"] == best
    for name in POLICIES:
        points = per_cat["policies"][name]
        assert set(points) == {"max_quality", "target_0.3", "target_0.4", "target_0.5",
                               "target_0.7"}  # fmt: skip
        # Unconstrained, each category goes to its best model (not always `big`).
        assert points["max_quality"]["accuracy"] == best, name
        assert set(points["target_0.5"]["cost_fraction"]) == set(SCORES)
        # Sending Japanese maths to `mid` and German to `small` beats `big` at a lower cost.
        entry = report["policies"][name]
        top = max(entry["curve"], key=lambda p: p["accuracy"])
        assert top["accuracy"] > report["best_single"]["accuracy"], name
        assert top["cost"] < report["best_single"]["cost"], name


def test_eval_routing_says_why_votes_are_skipped_and_what_to_drop(data: dict[str, Path]) -> None:
    test = rows(20, offset=2000, gaps=False)
    for r in test:
        r["predictions"] = {m: "A" for m in POOL}
        r["answer"] = "A"
    write(data["test"], test)
    argv = [f"--{k}={v}" for k, v in data.items()]
    assert main([*argv, "--encoder=hash", "--no-cache", "--folds=2", "--policies=knn"]) == 0
    report = json.loads((data["out"] / "report.json").read_text())
    assert "fractional scores" in report["multi_expert_skipped"]

    test = rows(8, offset=3000, gaps=False)
    for i, r in enumerate(test):
        del r["outcomes"]["mid" if i % 4 else "small"]
    write(data["test"], test)
    err = capture_main([*argv, "--encoder=hash", "--no-cache", "--folds=2"])
    assert "unknown outcomes per model: small (2), mid (6)" in err and "from --pool" in err


def capture_main(argv: list[str]) -> str:
    import contextlib
    import io

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        assert main(argv) == 2
    return stderr.getvalue()


def test_a_pool_model_absent_from_the_data_is_an_error_with_the_fix(
    data: dict[str, Path],
) -> None:
    models = yaml.safe_load(data["models"].read_text())
    models["models"]["gpt-x"] = {"active_b": 5}
    data["models"].write_text(yaml.safe_dump(models))
    argv = [f"--{k}={v}" for k, v in data.items()]
    err = capture_main([*argv, "--encoder=hash", "--no-cache", "--pool", "small,gpt-x"])
    assert "pool model(s) ['gpt-x'] have no outcome in the data" in err
    assert "models seen in the data: big, extra, mid, small" in err and "--pool" in err


def test_the_readme_example_line_parses_and_its_error_is_the_one_documented(
    tmp_path: Path,
) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Outcome data") :]
    example = section[section.index("```json\n") + 8 :].split("\n```", 1)[0]
    q = parse_question(json.loads(example))
    assert q.category == "mgsm-ja" and q.outcomes == {"qwen2.5-7b": 1.0, "llama-3.1-8b": 0.5}
    documented = section[section.index("error: bad.jsonl:2: ") :].split("\n", 1)[0]
    bad = json.loads(example) | {"id": "x", "outcomes": {"small": 85}}
    write(tmp_path / "bad.jsonl", [json.loads(example), bad])
    with pytest.raises(OutcomesError) as info:
        load_outcomes(tmp_path / "bad.jsonl")
    assert f"error: {info.value.message}".replace(f"{tmp_path}/", "") == documented


def test_without_a_reference_pool_the_pool_is_every_costed_model_in_the_data(
    data: dict[str, Path],
) -> None:
    models = {"models": {"ghost": {"active_b": 2}, **MODELS_YAML["models"], "free": {}}}
    data["models"].write_text(yaml.safe_dump(models, sort_keys=False))
    argv = [f"--{k}={v}" for k, v in data.items()]
    assert main([*argv, "--encoder=hash", "--no-cache", "--folds=2", "--policies=knn"]) == 0
    report = json.loads((data["out"] / "report.json").read_text())
    assert report["pool"] == POOL  # not ghost (no outcomes), not free (no cost)
    data["models"].write_text(yaml.safe_dump({"models": {"ghost": {"active_b": 2}}}))
    err = capture_main([*argv, "--encoder=hash", "--no-cache"])
    assert "empty pool" in err and "models in the data: big, extra, mid, small" in err
