"""The routing-quality harness: report arithmetic, end-to-end on synthetic data, CLI errors."""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from router.classify import Encoder
from skills._routing_report import apgr, cost_fraction_at, first_above, mix_curve
from skills.outcomes import ModelsFile, OutcomesError, Question, load_outcomes
from skills.routing_eval import evaluate_routing, main

SMALL = {"centroid": {"n_clusters": 4}, "knn": {"k": 8}, "predictor": {"c": 10.0}, "symbolic": {}}


class TopicEncoder(Encoder):
    """Deterministic fake: the first word of a prompt picks a unit axis, the rest adds jitter."""

    name = "topic-fake"
    dim = 8

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            topic, _, rest = text.partition(" ")
            out[i, {"alpha": 0, "beta": 1}[topic]] = 1.0
            out[i, 2 + sum(map(ord, rest)) % 6] = 0.1
        return out / np.linalg.norm(out, axis=1, keepdims=True)


MODELS = ModelsFile.model_validate(
    {
        "models": {
            "small": {"active_b": 1},
            "big": {"active_b": 10},
            "x": {"active_b": 2},
            "y": {"active_b": 2},
            "z": {"active_b": 2},
        },
        "reference_pool": ["small", "big"],
    }
)


def questions(n: int, offset: int = 0) -> list[Question]:
    """'big' is always right; 'small' only on alpha. x, y, z each miss a different third."""
    out = []
    for i in range(offset, offset + n):
        topic = "alpha" if i % 2 == 0 else "beta"
        outcomes = {"big": 1, "small": int(topic == "alpha")}
        outcomes |= {m: int(i % 3 != j) for j, m in enumerate("xyz")}
        preds = {m: "A" if ok else "B" for m, ok in outcomes.items()}
        out.append(
            Question(
                id=f"q{i}",
                category=topic,
                prompt=f"{topic} question {i}",
                answer="A",
                outcomes=outcomes,
                predictions=preds,
            )
        )
    return out


def test_cost_fraction_at_reads_the_cheapest_point_reaching_each_fraction() -> None:
    curve = [
        {"knob": 2.0, "accuracy": 0.40, "cost": 10.0},
        {"knob": 1.0, "accuracy": 0.57, "cost": 30.0},
        {"knob": 0.5, "accuracy": 0.62, "cost": 50.0},
        {"knob": 0.1, "accuracy": 0.55, "cost": 60.0},
        {"knob": 0.0, "accuracy": 0.60, "cost": 70.0},
    ]
    got = cost_fraction_at(curve, ref_accuracy=0.60, ref_cost=100.0)
    # 0.8·0.6 = 0.48 -> 30; 0.9·0.6 = 0.54 -> 30; 0.95·0.6 = 0.57 -> 30; 1.0 -> 50 (not 70).
    assert got == {"0.8": 0.3, "0.9": 0.3, "0.95": 0.3, "1.0": 0.5}
    assert cost_fraction_at(curve, ref_accuracy=0.7, ref_cost=100.0)["1.0"] is None
    assert first_above(curve, 0.60) == curve[2]
    assert first_above(curve, 0.62) is None


def test_apgr_matches_routellm_on_two_models() -> None:
    weak, strong = (0.4, 10.0), (0.6, 70.0)
    random = mix_curve([(10.0, 0.4), (70.0, 0.6)])
    assert apgr(random, weak, strong) == pytest.approx(0.5, abs=0.01)
    perfect = [{"knob": 0.0, "accuracy": 0.6, "cost": 10.0}]
    assert apgr(perfect, weak, strong) == pytest.approx(1.0)
    # Below the cheapest point the weak model's accuracy counts; a step at 40 then is a hull edge.
    step = [{"knob": 1, "accuracy": 0.6, "cost": 40.0}, {"knob": 0, "accuracy": 0.6, "cost": 70.0}]
    assert apgr(step, weak, strong) == pytest.approx(0.5, abs=0.01)
    worse = [
        {"knob": 0.0, "accuracy": 0.3, "cost": 10.0},
        {"knob": 1, "accuracy": 0.6, "cost": 70.0},
    ]
    assert apgr(worse, weak, strong) == pytest.approx(0.25, abs=0.01)


def test_random_mix_is_the_upper_hull_of_single_models() -> None:
    curve = mix_curve([(1.0, 0.3), (5.0, 0.2), (6.0, 0.55), (10.0, 0.6)], steps=4)
    points = {(p["cost"], p["accuracy"]) for p in curve}
    assert (5.0, 0.2) not in points  # dominated
    assert (6.0, 0.55) in points and (10.0, 0.6) in points
    assert (3.5, 0.425) in points  # halfway between (1, 0.3) and (6, 0.55)


def test_router_sends_each_topic_to_the_cheapest_expert_that_is_right() -> None:
    report = evaluate_routing(
        questions(60),
        questions(40, offset=1000),
        MODELS,
        None,
        TopicEncoder(),
        policies=SMALL,
        folds=3,
    )
    assert report["best_single"] == {
        "model": "big",
        "accuracy": 1.0,
        "cost": 10.0,
        "train_accuracy": 1.0,
        "chosen_on": "train",
    }
    assert report["oracle_accuracy"] == 1.0
    assert report["oracle_cost"] == pytest.approx(5.5)  # alpha -> small (1), beta -> big (10)
    # Random mixing cannot keep full accuracy below the big model's cost.
    assert report["baselines"]["random_mix"]["cost_fraction_at"]["1.0"] == 1.0
    for name, entry in report["policies"].items():
        # Route alpha to small, beta to big: full accuracy at 55% of the big model's cost.
        assert entry["cost_fraction_at"]["1.0"] == pytest.approx(0.55), name
        # PGR climbs from 0 at 1/10 of the cost to 1 at 5.5/10 and stays: 0.25 + 0.5.
        assert entry["apgr"] == pytest.approx(0.75, abs=0.01), name
        # λ calibrated on training folds for 50% of the cost: close to the 55% optimum, not above
        # the budget, so it gives up some accuracy.
        at_half = next(c for c in entry["calibrated"] if c["target_cost_fraction"] == 0.5)
        assert at_half["test_cost_fraction"] <= 0.55, name


def test_missing_outcomes_are_masked_in_fit_and_dropped_in_evaluation() -> None:
    train, test = questions(60), questions(40, offset=1000)
    gaps = [Question(**{**q.__dict__, "outcomes": {"big": 1}}) for q in questions(6, offset=50)]
    report = evaluate_routing(
        train + gaps[:3],
        test + gaps[3:],
        MODELS,
        None,
        TopicEncoder(),
        policies={"knn": {"k": 8}},
        folds=3,
    )
    assert report["missing_outcomes"]["test_questions_dropped"] == 3
    assert report["missing_outcomes"]["train_unknown_entries_masked"] == 3
    assert report["n_test"] == 43 and report["n_test_evaluated"] == 40
    assert report["policies"]["knn"]["cost_fraction_at"]["1.0"] == pytest.approx(0.55)


def test_vote_of_three_beats_each_of_them_and_reports_the_cost() -> None:
    report = evaluate_routing(
        questions(60),
        questions(30, offset=1000),
        MODELS,
        ["x", "y", "z"],
        TopicEncoder(),
        policies={"symbolic": {}},
        ks=(3,),
        folds=3,
    )
    assert report["best_single"]["accuracy"] == pytest.approx(2 / 3, abs=0.01)
    multi = report["policies"]["symbolic"]["multi_expert"]["3"]
    # Each model misses a different third; two of three are always right.
    assert multi["best_accuracy"]["accuracy"] == 1.0
    assert multi["beats_best_single_at"]["cost"] == 6.0


def write_jsonl(path: Path, qs: list[Question], gz: bool = False) -> Path:
    lines = "".join(json.dumps(q.__dict__) + "\n" for q in qs)
    if gz:
        with gzip.open(path, "wt") as fh:
            fh.write(lines)
    else:
        path.write_text(lines)
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    models = tmp_path / "models.yaml"
    models.write_text(json.dumps(MODELS.model_dump()))  # JSON is valid YAML
    return {
        "train": write_jsonl(tmp_path / "train.jsonl.gz", questions(40), gz=True),
        "test": write_jsonl(tmp_path / "test.jsonl", questions(20, offset=500)),
        "models": models,
        "out": tmp_path / "out",
    }


def run(files: dict[str, Path], *extra: str) -> int:
    argv = [f"--{k}={v}" for k, v in files.items()]
    return main([*argv, "--encoder=hash", "--no-cache", "--folds=2", "--k=2", *extra])


def test_cli_writes_report_and_plot(files: dict[str, Path]) -> None:
    assert run(files, "--policies=knn,symbolic") == 0
    report = json.loads((files["out"] / "report.json").read_text())
    assert report["pool"] == ["small", "big"]
    assert set(report["policies"]) == {"knn", "symbolic"}
    entry = report["policies"]["knn"]
    assert set(entry["cost_fraction_at"]) == {"0.8", "0.9", "0.95", "1.0"}
    assert all(set(p) == {"knob", "accuracy", "cost"} for p in entry["curve"])
    assert (files["out"] / "curve.png").stat().st_size > 1000


def test_cli_bad_inputs_exit_2_with_a_message(files: dict[str, Path], capsys) -> None:
    assert run({**files, "train": files["train"].with_name("nope.jsonl")}) == 2
    assert "outcomes file not found" in capsys.readouterr().err

    assert run(files, "--pool", "small", "gpt-9") == 2
    err = capsys.readouterr().err
    assert "unknown pool model(s) ['gpt-9']" in err and "known models are: small, big, x" in err

    bad = files["test"].with_name("bad.jsonl")
    bad.write_text(files["test"].read_text().splitlines()[0] + "\n{not json\n")
    assert run({**files, "test": bad}) == 2
    assert "bad.jsonl:2: not valid JSON" in capsys.readouterr().err

    bad.write_text(
        '{"id": "a", "category": "c", "prompt": "p", "answer": "A", "outcomes": {"big": 3}}\n'
    )
    assert run({**files, "test": bad}) == 2
    assert "bad.jsonl:1: outcome of 'big' is 3, outside [0, 1]" in capsys.readouterr().err

    assert run(files, "--policies=oracle") == 2
    assert "unknown policy 'oracle'" in capsys.readouterr().err
    assert main(["--train", "x"]) == 2  # argparse: missing required arguments
    assert not (files["out"] / "report.json").exists()


def test_runs_as_a_module_without_a_traceback(files: dict[str, Path]) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    argv = [f"--{k}={v}" for k, v in files.items()]
    proc = subprocess.run(
        [sys.executable, "-m", "skills.routing_eval", *argv, "--pool=small,nope"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "error: unknown pool model(s) ['nope']" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_load_outcomes_reads_plain_and_gzip_alike(files: dict[str, Path]) -> None:
    gz = load_outcomes(files["train"])
    plain = load_outcomes(write_jsonl(files["train"].with_name("plain.jsonl"), questions(40)))
    assert gz == plain and len(gz) == 40
    with pytest.raises(OutcomesError, match="missing field 'prompt'"):
        files["test"].write_text('{"id": "a", "category": "c", "answer": "A", "outcomes": {}}\n')
        load_outcomes(files["test"])
