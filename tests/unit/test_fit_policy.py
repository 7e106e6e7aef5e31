"""`quorum fit-policy`: from a profiling job's graded answers or an outcomes file to an artifact."""

import json
from pathlib import Path

import numpy as np

from router.artifact import load_policy
from skills.fit_policy import main
from skills.routing_eval import HashingEncoder
from skills.validation import load_validation_set

DATA = Path(__file__).resolve().parents[2] / "skills" / "data" / "tiny_profile_set.jsonl"
REGISTRY = """
skills: [biology, math, law, other]
experts:
  - {name: cheap, model: m1, default_competence: 0.5}
  - {name: dear, model: m2, default_competence: 0.5}
"""


def registry(tmp_path):
    path = tmp_path / "registry.yaml"
    path.write_text(REGISTRY)
    return str(path)


def test_fit_from_a_profile_run(tmp_path, capsys):
    items = load_validation_set(DATA).items
    rows = []
    for i, item in enumerate(items):
        for expert in ("cheap", "dear"):
            score = 1.0 if expert == "dear" or i % 2 else 0.0
            rows.append({"kind": "answer", "expert": expert, "fingerprint": "f", "item": item.id,
                         "item_hash": item.digest(), "answer": "A", "extracted": "A",
                         "score": score, "error": None})  # fmt: skip
    rows.append({**rows[0], "kind": "aggregate"})  # not an answer: ignored
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "policy.npz"
    code = main(["--kind", "knn", "--registry", registry(tmp_path), "--profile-dir",
                 str(tmp_path), "--data", str(DATA), "--encoder", "hash", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    artifact = load_policy(out)
    assert artifact.experts == ["cheap", "dear"]
    assert artifact.manifest["fitted_on"]["rows"] == len(items)
    assert artifact.manifest["encoder"] == HashingEncoder().name
    assert artifact.calibration_quality.shape == (len(items), 2)
    q = artifact.policy.predict_quality(HashingEncoder().encode([items[0].prompt]))
    assert q[0, 1] > q[0, 0]  # dear was always right, cheap half the time


def test_fit_from_outcomes_and_its_errors(tmp_path, capsys):
    lines = [{"id": f"q{i}", "category": "math" if i % 2 else "law", "prompt": f"question {i} x",
              "answer": "A", "outcomes": {"cheap": i % 2, "dear": 1}} for i in range(20)]  # fmt: skip
    path = tmp_path / "o.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = tmp_path / "p.npz"
    args = ["--registry", registry(tmp_path), "--outcomes", str(path), "--encoder", "hash",
            "--out", str(out), "--kind", "predictor"]  # fmt: skip
    assert main(args) == 0
    assert np.isfinite(load_policy(out).calibration_quality).all()
    # An expert with no outcome at all cannot be routed to: an error naming it and the fix.
    only_cheap = [{**r, "outcomes": {"cheap": r["outcomes"]["cheap"]}} for r in lines]
    path.write_text("".join(json.dumps(r) + "\n" for r in only_cheap))
    assert main(args) == 2
    assert "no known outcome for expert(s) dear" in capsys.readouterr().err
    assert main(["--registry", registry(tmp_path), "--encoder", "hash"]) == 2
    assert "no training rows" in capsys.readouterr().err
    assert main([*args[:-2], "--publish"]) == 2
    assert "--redis-url" in capsys.readouterr().err
