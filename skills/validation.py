"""Validation sets: labelled questions the profiling job (`skills.profile`) runs every expert on.

Format: JSONL, one item per line (`ValidationItem`):

    {"id": "mmlu-pro-70", "prompt": "…question and options…", "reference": "I",
     "skills": ["business"], "grader": "multiple_choice", "grader_args": {"choices": "ABCDEFGHIJ"}}

`prompt` is sent as one user message; give `messages` (OpenAI chat messages) instead for a system
prompt or few-shot turns. `skills` name skills of the registry's taxonomy (an item may test
several). `grader` names an entry of `GRADERS`:

    multiple_choice   the first option letter in the answer ("B", "(B)", "Answer: B", "B. …")
    exact_match       normalised text equality (case, punctuation, articles, spacing ignored)
    number            the last number in the answer equals the reference within a tolerance

Graders are pluggable: subclass `Grader` and `register_grader("name", MyGrader())` before loading.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from experts.answers import extract_choice, normalise_text, parse_number
from experts.errors import QuorumError

__all__ = [
    "GRADERS",
    "ExactMatchGrader",
    "Grade",
    "Grader",
    "MultipleChoiceGrader",
    "NumberGrader",
    "ValidationItem",
    "ValidationSet",
    "ValidationSetError",
    "grade",
    "load_validation_set",
    "mmlu_pro_subset",
    "register_grader",
    "write_validation_set",
]


class ValidationSetError(QuorumError):
    """A validation set is missing or malformed (raised before any expert runs)."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_validation_set"


# -- graders ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grade:
    """`score` in [0, 1] (1 = correct); `extracted` is what the grader read from the answer."""

    score: float
    extracted: str | None


class Grader(ABC):
    """Scores one answer against its reference. Stateless; `args` come from the item."""

    @abstractmethod
    def grade(self, answer: str, reference: str, args: dict[str, Any]) -> Grade: ...

    def check_reference(self, reference: str, args: dict[str, Any]) -> str | None:
        """Why `reference` can never be matched (checked at load time), or None if it is fine."""
        return None


class MultipleChoiceGrader(Grader):
    """The first option letter in the answer. `args.choices`: the valid letters (default A-J)."""

    def extract(self, answer: str, choices: str) -> str | None:
        """The chosen letter, or None when the answer names none of `choices`."""
        return extract_choice(answer, choices)

    def grade(self, answer: str, reference: str, args: dict[str, Any]) -> Grade:
        letter = self.extract(answer, str(args.get("choices", "ABCDEFGHIJ")))
        return Grade(float(letter == reference.strip().upper()), letter)

    def check_reference(self, reference: str, args: dict[str, Any]) -> str | None:
        choices = str(args.get("choices", "ABCDEFGHIJ"))
        if reference.strip().upper() not in choices:
            return f"reference {reference!r} is not one of the choices {choices!r}"
        return None


class ExactMatchGrader(Grader):
    """Normalised equality with the reference or one of `args.aliases`."""

    def grade(self, answer: str, reference: str, args: dict[str, Any]) -> Grade:
        got = normalise_text(answer)
        wanted = {normalise_text(r) for r in [reference, *args.get("aliases", [])]}
        return Grade(float(got in wanted), got)


class NumberGrader(Grader):
    """The last number in the answer equals the reference within `args.rel_tol` (1e-6) or
    `args.abs_tol` (1e-9)."""

    def grade(self, answer: str, reference: str, args: dict[str, Any]) -> Grade:
        got, wanted = parse_number(answer), parse_number(reference)
        if got is None or wanted is None:
            return Grade(0.0, None if got is None else repr(got))
        ok = math.isclose(got, wanted, rel_tol=float(args.get("rel_tol", 1e-6)),
                          abs_tol=float(args.get("abs_tol", 1e-9)))  # fmt: skip
        return Grade(float(ok), repr(got))

    def check_reference(self, reference: str, args: dict[str, Any]) -> str | None:
        return None if parse_number(reference) is not None else f"{reference!r} has no number"


GRADERS: dict[str, Grader] = {
    "multiple_choice": MultipleChoiceGrader(),
    "exact_match": ExactMatchGrader(),
    "number": NumberGrader(),
}


def register_grader(name: str, grader: Grader) -> None:
    """Make `grader` available to validation items as `"grader": name`."""
    if not isinstance(grader, Grader):
        raise TypeError(f"register_grader({name!r}, …) needs a Grader, got {type(grader).__name__}")
    GRADERS[name] = grader


# -- items and sets -----------------------------------------------------------------------------


class ValidationItem(BaseModel):
    """One labelled question."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, description="Unique within the set; results are keyed by it.")
    prompt: str | None = Field(None, description="The question, sent as one user message.")
    messages: list[dict[str, str]] | None = Field(
        None, description="OpenAI chat messages instead of `prompt` (system prompt, few-shot)."
    )
    reference: str = Field(description="The correct answer, as the grader expects it.")
    skills: list[str] = Field(min_length=1, description="Skills (registry taxonomy) it tests.")
    grader: str = Field("multiple_choice", description="Name of an entry of GRADERS.")
    grader_args: dict[str, Any] = Field(default_factory=dict, description="Passed to the grader.")
    meta: dict[str, Any] = Field(default_factory=dict, description="Free-form (source, notes).")

    @model_validator(mode="after")
    def _check(self) -> ValidationItem:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' and 'messages'")
        if self.grader not in GRADERS:
            raise ValueError(
                f"grader '{self.grader}' is unknown; graders are: {', '.join(sorted(GRADERS))} "
                "(register more with skills.validation.register_grader)"
            )
        problem = GRADERS[self.grader].check_reference(self.reference, self.grader_args)
        if problem:
            raise ValueError(f"grader '{self.grader}': {problem}")
        return self

    def conversation(self) -> list[dict[str, str]]:
        """The chat messages to send to an expert."""
        if self.messages is not None:
            return [dict(m) for m in self.messages]
        return [{"role": "user", "content": self.prompt or ""}]

    def digest(self) -> str:
        """Content hash: a stored result counts for this item only while the item is unchanged."""
        raw = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    def grade(self, answer: str) -> Grade:
        return GRADERS[self.grader].grade(answer, self.reference, self.grader_args)


def grade(item: ValidationItem, answer: str) -> Grade:
    """Grade `answer` to `item` with the item's grader."""
    return item.grade(answer)


@dataclass(frozen=True)
class ValidationSet:
    items: list[ValidationItem]
    source: str
    digest: str  # sha256 of the items' canonical JSON: identifies the data a profile measured

    @property
    def skills(self) -> list[str]:
        """Skills the set covers, in first-seen order."""
        return list(dict.fromkeys(s for item in self.items for s in item.skills))


def _set_digest(items: Sequence[ValidationItem]) -> str:
    h = hashlib.sha256()
    for item in items:
        h.update(json.dumps(item.model_dump(mode="json"), sort_keys=True).encode() + b"\n")
    return h.hexdigest()


def load_validation_set(path: str | Path, *, skills: Sequence[str] | None = None) -> ValidationSet:
    """Read and check a JSONL validation set (`.jsonl` or `.jsonl.gz`). With `skills` (the
    registry's taxonomy), every item's skills must be among them. All problems are reported at once.
    """
    p = Path(path)
    if not p.is_file():
        raise ValidationSetError(f"validation set not found: {p} (pass --data PATH to a JSONL file)",
                                 param="data")  # fmt: skip
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    items: list[ValidationItem] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    known = set(skills) if skills is not None else None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = ValidationItem.model_validate(json.loads(line))
        except json.JSONDecodeError as exc:
            problems.append(f"line {n}: not JSON ({exc.msg} at column {exc.colno})")
            continue
        except ValidationError as exc:  # does not pickle: flatten into our message
            for err in exc.errors():
                loc = ".".join(str(x) for x in err["loc"]) or "(item)"
                problems.append(f"line {n}: {loc}: {err['msg'].removeprefix('Value error, ')}")
            continue
        if item.id in seen:
            problems.append(f"line {n}: id '{item.id}' is also on line {seen[item.id]}")
        seen[item.id] = n
        if known is not None:
            for s in item.skills:
                if s not in known:
                    problems.append(f"line {n}: skill '{s}' is not in the registry's skills "
                                    f"({', '.join(skills or [])})")  # fmt: skip
        items.append(item)
    if problems:
        shown = "\n  - ".join(problems[:20])
        more = f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ValidationSetError(f"{p}: invalid validation set ({len(problems)} problem(s)):\n"
                                 f"  - {shown}{more}", param="data")  # fmt: skip
    if not items:
        raise ValidationSetError(f"{p}: the validation set has no items", param="data")
    return ValidationSet(items=items, source=str(p), digest=_set_digest(items))


def write_validation_set(items: Iterable[ValidationItem], path: str | Path) -> None:
    """Write items as JSONL (the format `load_validation_set` reads)."""
    with open(path, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item.model_dump(mode="json", exclude_none=True)) + "\n")


MC_INSTRUCTION = (
    "The following is a multiple choice question about {skill}. "
    "Reply with the letter of the correct option only."
)


def mmlu_pro_subset(
    source: str | Path, categories: Sequence[str], per_category: int, *, max_prompt_chars: int = 600
) -> list[ValidationItem]:
    """Multiple-choice items from bundled MMLU-Pro rows (`skills/data/mmlu_pro_dev.jsonl.gz`).

    Per category, the `per_category` shortest questions (ties by id) no longer than
    `max_prompt_chars`: deterministic, and short prompts keep CPU profiling fast. The category is
    the item's skill; the prompt asks for the letter only, graded by `multiple_choice`.
    """
    by_cat: dict[str, list[dict]] = {c: [] for c in categories}
    with gzip.open(source, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["category"] in by_cat and len(row["prompt"]) <= max_prompt_chars:
                by_cat[row["category"]].append(row)
    items: list[ValidationItem] = []
    for cat in categories:
        rows = sorted(by_cat[cat], key=lambda r: (len(r["prompt"]), r["id"]))[:per_category]
        if len(rows) < per_category:
            raise ValidationSetError(f"MMLU-Pro category '{cat}' has only {len(rows)} questions "
                                     f"of at most {max_prompt_chars} characters")  # fmt: skip
        for r in rows:
            n_options = len(re.findall(r"(?m)^[A-J]\. ", r["prompt"]))
            items.append(ValidationItem(
                id=r["id"],
                prompt=f"{MC_INSTRUCTION.format(skill=cat)}\n\n{r['prompt']}\n\nAnswer:",
                reference=r["answer"],
                skills=[cat],
                grader="multiple_choice",
                grader_args={"choices": "ABCDEFGHIJ"[: n_options or 10]},
                meta={"source": "MMLU-Pro", "mmlu_pro_source": r["source"]},
            ))  # fmt: skip
    return items
