"""Validation-set format, loader errors and graders."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from skills.validation import (
    GRADERS,
    Grade,
    Grader,
    ValidationItem,
    ValidationSetError,
    load_validation_set,
    mmlu_pro_subset,
    register_grader,
    write_validation_set,
)

DATA = Path(__file__).resolve().parents[2] / "skills" / "data"


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        ("B", "B"), (" (C) Mutualism", "C"), ("d. Parasitism", "D"), ("**A**", "A"),
        ("The answer is (E).", "E"), ("Answer: J", "J"), ("I think C is right", "C"),
        ("A. Commensalism\nB. Succession", "A"), ("Succession", None), ("", None),
        ("X", None), ("A cat is B", "B"),  # X: not an option letter
    ],
)  # fmt: skip
def test_multiple_choice_reads_the_first_option_letter(answer, letter):
    assert GRADERS["multiple_choice"].extract(answer, "ABCDEFGHIJ") == letter


def test_multiple_choice_respects_the_items_choices():
    grader = GRADERS["multiple_choice"]
    assert grader.grade("F", "F", {"choices": "ABCD"}) == Grade(0.0, None)
    assert grader.grade("b) yes", "B", {"choices": "ABCD"}) == Grade(1.0, "B")


@pytest.mark.parametrize(
    ("answer", "reference", "score"),
    [("The Eiffel Tower!", "eiffel tower", 1.0), ("Paris, France", "Paris", 0.0),
     ("  an   Apple ", "apple", 1.0)],
)  # fmt: skip
def test_exact_match_normalises(answer, reference, score):
    assert GRADERS["exact_match"].grade(answer, reference, {}).score == score


def test_exact_match_aliases():
    assert GRADERS["exact_match"].grade("NYC", "New York", {"aliases": ["nyc"]}).score == 1.0


@pytest.mark.parametrize(
    ("answer", "reference", "score"),
    [("so x = 1,234.50", "1234.5", 1.0), ("#### 42", "42", 1.0), ("it is 3/4", "0.75", 1.0),
     ("-7 degrees", "-7", 1.0), ("41.9", "42", 0.0), ("no idea", "3", 0.0),
     ("first 3 then 5", "5", 1.0)],
)  # fmt: skip
def test_number_grader_uses_the_last_number(answer, reference, score):
    assert GRADERS["number"].grade(answer, reference, {}).score == score


def test_number_grader_tolerance():
    assert GRADERS["number"].grade("3.14", "3.14159", {"abs_tol": 0.01}).score == 1.0


def test_graders_are_pluggable():
    class Contains(Grader):
        def grade(self, answer, reference, args):
            return Grade(float(reference in answer), None)

    register_grader("contains-test", Contains())
    try:
        item = ValidationItem(id="x", prompt="q", reference="yes", skills=["math"],
                              grader="contains-test")  # fmt: skip
        assert item.grade("oh yes indeed").score == 1.0
    finally:
        del GRADERS["contains-test"]


def test_loader_round_trip_and_digest(tmp_path):
    items = [ValidationItem(id=f"q{i}", prompt=f"{i}+{i}?", reference=str(2 * i), skills=["math"],
                            grader="number") for i in range(3)]  # fmt: skip
    items.append(ValidationItem(id="m", messages=[{"role": "system", "content": "Be brief."},
                                                  {"role": "user", "content": "Capital of France?"}],
                                reference="Paris", skills=["history"], grader="exact_match"))  # fmt: skip
    write_validation_set(items, tmp_path / "a.jsonl")
    vs = load_validation_set(tmp_path / "a.jsonl", skills=["math", "history"])
    assert vs.items == items
    assert vs.skills == ["math", "history"]
    assert vs.items[3].conversation()[0] == {"role": "system", "content": "Be brief."}
    assert vs.items[0].conversation() == [{"role": "user", "content": "0+0?"}]
    # The digest identifies content: same items, same digest; any change, new digest.
    write_validation_set(items[:3], tmp_path / "b.jsonl")
    assert load_validation_set(tmp_path / "b.jsonl").digest != vs.digest
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        f.write((tmp_path / "a.jsonl").read_text())
    assert load_validation_set(tmp_path / "a.jsonl.gz").digest == vs.digest


def test_loader_reports_every_problem_with_its_line(tmp_path):
    path = _write(tmp_path / "bad.jsonl", [
        {"id": "a", "prompt": "q", "reference": "B", "skills": ["math"]},
        "{not json",
        {"id": "a", "prompt": "q", "reference": "C", "skills": ["math"]},
        {"id": "b", "reference": "C", "skills": ["math"]},
        {"id": "c", "prompt": "q", "reference": "Z", "skills": ["math"]},
        {"id": "d", "prompt": "q", "reference": "A", "skills": ["mth"]},
        {"id": "e", "prompt": "q", "reference": "A", "skills": ["math"], "grader": "regex"},
    ])  # fmt: skip
    with pytest.raises(ValidationSetError) as info:
        load_validation_set(path, skills=["math", "law"])
    msg = info.value.message
    assert "7 problem(s)" not in msg  # one problem per bad line, six bad lines
    assert "6 problem(s)" in msg
    assert "line 2: not JSON" in msg
    assert "line 3: id 'a' is also on line 1" in msg
    assert "line 4" in msg and "exactly one of 'prompt' and 'messages'" in msg
    assert "line 5" in msg and "not one of the choices" in msg
    assert "line 6: skill 'mth' is not in the registry's skills (math, law)" in msg
    assert "line 7" in msg and "grader 'regex' is unknown" in msg


def test_missing_file_names_the_flag(tmp_path):
    with pytest.raises(ValidationSetError, match="--data"):
        load_validation_set(tmp_path / "nope.jsonl")


def test_bundled_tiny_profile_set_is_the_documented_mmlu_pro_subset():
    vs = load_validation_set(DATA / "tiny_profile_set.jsonl")
    categories = ["biology", "economics", "history", "math", "physics"]
    assert vs.skills == categories
    rebuilt = mmlu_pro_subset(DATA / "mmlu_pro_dev.jsonl.gz", categories, 4)
    assert vs.items == rebuilt
