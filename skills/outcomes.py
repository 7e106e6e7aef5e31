"""Per-query outcome data (which expert answered which question correctly) and the models file.

The outcomes format is one JSON object per line, plain or gzipped (`.gz`):

| field         | type                   | meaning                                             |
|---------------|------------------------|-----------------------------------------------------|
| `id`          | str                    | unique question id                                  |
| `category`    | str                    | coarse skill label (e.g. MMLU-Pro's 14 categories)  |
| `prompt`      | str                    | question text, what the router embeds               |
| `answer`      | str                    | gold answer (a letter for MMLU-Pro)                 |
| `outcomes`    | {model: 0 or 1}        | 1 = that model answered correctly                   |
| `predictions` | {model: str or null}   | optional; the answer each model gave (for voting)   |

A model absent from `outcomes` did not see the question: its outcome is unknown, not wrong.
`models.yaml` gives each model's `active_b` (active parameters, the serving-cost proxy) and the
`reference_pool`; see skills/data/mmlu_pro_models.yaml.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel, Field, ValidationError

__all__ = [
    "ModelInfo",
    "ModelsFile",
    "OutcomeTable",
    "OutcomesError",
    "Question",
    "load_models",
    "load_outcomes",
    "parse_question",
]


class OutcomesError(ValueError):
    """Bad outcomes or models input; the message says what was received and what to change."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return (type(self), (self.message,))


@dataclass(frozen=True)
class Question:
    """One line of an outcomes file."""

    id: str
    category: str
    prompt: str
    answer: str
    outcomes: dict[str, int]
    predictions: dict[str, str | None] = field(default_factory=dict)


def parse_question(obj: object, where: str = "record") -> Question:
    """Validate one decoded JSON object; `where` names it in error messages (e.g. 'a.jsonl:12')."""
    if not isinstance(obj, dict):
        raise OutcomesError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in ("id", "category", "prompt", "answer", "outcomes"):
        if key not in obj:
            raise OutcomesError(f"{where}: missing field '{key}' (present: {sorted(obj)})")
    for key in ("id", "category", "prompt", "answer"):
        if not isinstance(obj[key], str):
            raise OutcomesError(
                f"{where}: field '{key}' must be a string, got {type(obj[key]).__name__}"
            )
    outcomes = obj["outcomes"]
    if not isinstance(outcomes, dict):
        raise OutcomesError(f"{where}: 'outcomes' must be an object of model -> 0/1")
    for model, value in outcomes.items():
        if isinstance(value, str) or value not in (0, 1):
            raise OutcomesError(f"{where}: outcome of '{model}' must be 0 or 1, got {value!r}")
    predictions = obj.get("predictions") or {}
    if not isinstance(predictions, dict):
        raise OutcomesError(f"{where}: 'predictions' must be an object of model -> answer or null")
    for model, value in predictions.items():
        if value is not None and not isinstance(value, str):
            raise OutcomesError(
                f"{where}: prediction of '{model}' must be a string or null, got {value!r}"
            )
    return Question(
        id=obj["id"],
        category=obj["category"],
        prompt=obj["prompt"],
        answer=obj["answer"],
        outcomes={m: int(v) for m, v in outcomes.items()},
        predictions=dict(predictions),
    )


def load_outcomes(path: str | Path) -> list[Question]:
    """Read an outcomes file (`.jsonl` or `.jsonl.gz`); errors name the file and line number."""
    path = Path(path)
    if not path.is_file():
        raise OutcomesError(f"outcomes file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    questions: list[Question] = []
    seen: set[str] = set()
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise OutcomesError(f"{where}: not valid JSON ({exc.msg})") from None
                question = parse_question(obj, where)
                if question.id in seen:
                    raise OutcomesError(f"{where}: duplicate id '{question.id}'")
                seen.add(question.id)
                questions.append(question)
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise OutcomesError(f"cannot read {path}: {exc}") from None
    if not questions:
        raise OutcomesError(f"{path}: no records (expected one JSON object per line)")
    return questions


class ModelInfo(BaseModel):
    """One model's size; `active_b` is the serving-cost proxy."""

    params_b: float | None = Field(None, description="total parameters, billions")
    active_b: float | None = Field(None, description="active parameters per token, billions")
    open_weights: bool = Field(True, description="weights are public (can be hosted on vLLM)")
    instruct: bool = Field(True, description="instruction/chat tuned")


class ModelsFile(BaseModel):
    """The models.yaml file: model sizes and the reference routing pool."""

    models: dict[str, ModelInfo] = Field(description="model name -> size information")
    reference_pool: list[str] = Field(
        default_factory=list, description="default pool for routing-quality figures"
    )

    def resolve_pool(self, names: Sequence[str] | None = None) -> list[str]:
        """The pool to route over (default `reference_pool`), checked to have known costs."""
        pool = list(names) if names else list(self.reference_pool)
        if not pool:
            raise OutcomesError(
                "empty pool: pass --pool NAMES or set reference_pool in models.yaml"
            )
        unknown = [n for n in pool if n not in self.models]
        if unknown:
            raise OutcomesError(
                f"unknown pool model(s) {unknown}; known models are: {', '.join(self.models)}"
            )
        if len(set(pool)) != len(pool):
            raise OutcomesError(f"pool lists a model twice: {pool}")
        no_cost = [n for n in pool if not self.models[n].active_b]
        if no_cost:
            raise OutcomesError(
                f"pool model(s) {no_cost} have no active_b (cost); give them one in models.yaml "
                "or leave them out of the pool"
            )
        return pool

    def costs(self, pool: Sequence[str]) -> np.ndarray:
        """`active_b` per pool model, `[E]`."""
        return np.array([float(self.models[n].active_b or 0.0) for n in pool])


def load_models(path: str | Path) -> ModelsFile:
    """Read and validate a models.yaml file."""
    path = Path(path)
    if not path.is_file():
        raise OutcomesError(f"models file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
        raise OutcomesError(f"{path}: not valid YAML ({exc})") from None
    try:
        return ModelsFile.model_validate(raw)
    except ValidationError as exc:
        # ValidationError does not pickle; keep only its text.
        raise OutcomesError(f"{path}: {exc}") from None


@dataclass(frozen=True)
class OutcomeTable:
    """Questions as arrays over one pool of experts.

    | field       | shape  | dtype   | meaning                                     |
    |-------------|--------|---------|---------------------------------------------|
    | correct     | [N, E] | float64 | 1 / 0, NaN where the outcome is unknown     |
    | predictions | [N, E] | object  | the expert's answer, None if none/unknown   |
    | answers     | [N]    | object  | gold answer                                 |
    | categories  | [N]    | object  | category label                              |
    """

    ids: list[str]
    prompts: list[str]
    categories: np.ndarray
    answers: np.ndarray
    correct: np.ndarray
    predictions: np.ndarray
    pool: list[str]

    @classmethod
    def build(cls, questions: Sequence[Question], pool: Sequence[str]) -> OutcomeTable:
        """Arrange `questions` over `pool`; fails if a pool model has no outcome at all."""
        pool = list(pool)
        correct = np.full((len(questions), len(pool)), np.nan)
        predictions = np.full((len(questions), len(pool)), None, dtype=object)
        for i, q in enumerate(questions):
            for j, name in enumerate(pool):
                if name in q.outcomes:
                    correct[i, j] = q.outcomes[name]
                    predictions[i, j] = q.predictions.get(name)
        never = [pool[j] for j in range(len(pool)) if np.isnan(correct[:, j]).all()]
        if never and len(questions):
            raise OutcomesError(
                f"pool model(s) {never} have no outcome in the data; models seen in the data: "
                f"{', '.join(sorted({m for q in questions for m in q.outcomes}))}"
            )
        return cls(
            ids=[q.id for q in questions],
            prompts=[q.prompt for q in questions],
            categories=np.array([q.category for q in questions], dtype=object),
            answers=np.array([q.answer for q in questions], dtype=object),
            correct=correct,
            predictions=predictions,
            pool=pool,
        )

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: np.ndarray) -> OutcomeTable:
        """The table restricted to `rows` (indices or a boolean mask)."""
        idx = np.arange(len(self))[rows]
        return OutcomeTable(
            ids=[self.ids[i] for i in idx],
            prompts=[self.prompts[i] for i in idx],
            categories=self.categories[idx],
            answers=self.answers[idx],
            correct=self.correct[idx],
            predictions=self.predictions[idx],
            pool=self.pool,
        )

    def complete_rows(self) -> np.ndarray:
        """Boolean `[N]`: every pool expert's outcome is known."""
        return ~np.isnan(self.correct).any(axis=1)
