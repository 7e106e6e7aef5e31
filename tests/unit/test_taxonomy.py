"""`quorum train-classifier`: the skill taxonomy and classifier head fitted from the categories
of outcome data, and the registry that serves them (the router checks classifier skills ==
registry skills)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from experts.registry import load_registry
from router.classify import EmbeddingSkillClassifier, LogRegHead, load_head
from router.router import Router
from skills.routing_eval import HashingEncoder
from skills.store import InMemoryStateStore
from skills.taxonomy import main as train_classifier
from tests.unit.test_outcome_data import PROMPTS, SCORES, clusters, rows, write


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Path]:
    return {"train": write(tmp_path / "train.jsonl.gz", rows(400), gz=True)}


def test_train_classifier_fits_the_datas_categories_into_a_servable_registry(
    tmp_path: Path, data: dict[str, Path], capsys
) -> None:
    registry_in = tmp_path / "registry.yaml"
    registry_in.write_text(yaml.safe_dump({
        "experts": [
            {"name": "small", "model": "m-small", "skills": {"math": 0.2}},
            {"name": "helper", "model": "big", "cost": {"input_per_1m": 2, "output_per_1m": 2}},
            {"name": "other", "model": "m-other"},
        ],
    }))  # fmt: skip
    head_path, registry_out = tmp_path / "head.json", tmp_path / "registry.out.yaml"
    argv = ["--outcomes", str(data["train"]), "--out", str(head_path), "--encoder=hash",
            "--no-cache", "--registry", str(registry_in), "--registry-out", str(registry_out)]  # fmt: skip
    assert train_classifier(argv) == 0
    printed = capsys.readouterr().out
    assert "4 skills" in printed and "skills:\n- default\n- gsm8k-ja" in printed

    head = load_head(str(head_path), "logreg")
    assert head.skills == sorted(SCORES)
    assert head.meta["held_out_accuracy"] == 1.0 and head.meta["held_out_rows"] > 0
    registry = load_registry(registry_out)
    assert registry.skills == head.skills
    assert registry.router.classifier.artifact == str(head_path.resolve())
    # Priors measured in the data for experts named like a model (by name or by model).
    assert registry.expert("small").skills["wmt-de"] == 0.9
    assert registry.expert("helper").skills["humaneval"] == 0.65
    assert registry.expert("other").skills == {}
    # The service's check (classifier skills == registry skills) passes, and it routes by them.
    router = Router(
        EmbeddingSkillClassifier(HashingEncoder(), head), registry, InMemoryStateStore()
    )
    decision = router.route(PROMPTS["gsm8k-ja"].format(i=99999), "auto")
    assert decision.skills[0]["skill"] == "gsm8k-ja"
    quality = {s["expert"]: s["quality"] for s in decision.recruitment["scores"]}
    assert quality == pytest.approx({"small": 0.25, "helper": 0.7, "other": 0.5}, abs=0.02)
    assert decision.experts == ["helper"]


def test_train_classifier_bad_input_exits_2_with_the_line(tmp_path: Path, capsys) -> None:
    bad = write(tmp_path / "bad.jsonl", [rows(1)[0], '{"id": "x", "prompt": "p"}'])
    assert train_classifier(["--outcomes", str(bad), "--out", str(tmp_path / "h.json")]) == 2
    assert f"{bad}:2: missing field 'outcomes'" in capsys.readouterr().err
    assert not (tmp_path / "h.json").exists()


def test_logreg_head_with_two_or_one_skill() -> None:
    x, labels = clusters(100)
    two = LogRegHead.fit(["de", "ja"], x, labels)
    probe, probe_labels = clusters(40, seed=9)
    assert (two.predict_proba(probe).argmax(axis=1) == probe_labels).all()
    one = LogRegHead.fit(["default", "unused"], x, np.zeros(len(x), dtype=int))
    assert one.predict_proba(probe)[:, 0] == pytest.approx(1.0)


def test_train_classifier_centroid_head_and_a_single_category(tmp_path: Path) -> None:
    one = [r | {"category": "only"} for r in rows(30)]
    for kind, records in (("centroid", rows(200)), ("logreg", one), ("centroid", one)):
        source = write(tmp_path / "d.jsonl", records)
        out = tmp_path / f"{kind}.json"
        argv = ["--outcomes", str(source), "--out", str(out), "--kind", kind, "--encoder=hash"]
        assert train_classifier([*argv, "--no-cache"]) == 0
        head = load_head(str(out), kind)
        assert head.skills == sorted({r.get("category", "default") for r in records})
        probs = head.predict_proba(HashingEncoder().encode([PROMPTS["wmt-de"].format(i=7)]))
        assert np.isfinite(probs).all() and probs.sum() == pytest.approx(1.0)
        top = "only" if records is one else "wmt-de"
        assert head.skills[int(probs.argmax())] == top, kind
