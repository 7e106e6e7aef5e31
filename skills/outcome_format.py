"""The outcomes file: one JSON object per line (plain, or gzipped when the name ends in `.gz`).

| field         | type                                | required | meaning                                  |
|---------------|-------------------------------------|----------|------------------------------------------|
| `id`          | string (or integer)                 | yes      | unique within the file                   |
| `prompt`      | non-empty string, any language      | yes      | the query text the router embeds         |
| `outcomes`    | {model: number in [0, 1], bool, null} | yes    | each model's score on this query         |
| `category`    | non-empty string                    | no       | any label (a dataset or task name); absent or null: `"default"` |
| `answer`      | string or null                      | no       | gold answer; only voting (k > 1) uses it |
| `predictions` | {model: string or null}             | no       | each model's extracted answer, for voting |

Outcomes are scores: 1 = right, 0 = wrong, a fraction = partly right (a pass rate, a judge's
score); `true`/`false` read as 1/0. A model absent from `outcomes`, or given `null`, did not see
the query: its outcome is *unknown*, which is never counted as wrong. Other fields (e.g. `source`)
are ignored. A bad line raises `OutcomesError` naming `file:line`, what is wrong and the fix.
"""

from __future__ import annotations

import gzip
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DEFAULT_CATEGORY",
    "OutcomesError",
    "Question",
    "load_outcomes",
    "parse_question",
]

#: The category of a row that has none.
DEFAULT_CATEGORY = "default"

_EXAMPLE = '{"id": "q1", "prompt": "...", "outcomes": {"model-a": 1, "model-b": 0.5}}'


class OutcomesError(ValueError):
    """Bad outcomes or models input; the message says what was received and what to change."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return (type(self), (self.message,))


@dataclass(frozen=True)
class Question:
    """One line of an outcomes file; `outcomes` holds only the known scores (floats in [0, 1])."""

    id: str
    category: str
    prompt: str
    answer: str | None
    outcomes: dict[str, float]
    predictions: dict[str, str | None] = field(default_factory=dict)


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _score(model: str, value: object, where: str) -> float | None:
    """One outcome as a float in [0, 1], or None when unknown."""
    if value is None:
        return None
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, int | float):
        raise OutcomesError(
            f"{where}: outcome of '{model}' is {json.dumps(value)} ({_kind(value)}); write a "
            "number in [0, 1] (1 right, 0 wrong, a fraction for partial credit), true/false, "
            "or null when the model was not run on this query"
        )
    if not math.isfinite(value):
        raise OutcomesError(
            f"{where}: outcome of '{model}' is {value}; write null for an unknown outcome"
        )
    if not 0.0 <= value <= 1.0:
        raise OutcomesError(
            f"{where}: outcome of '{model}' is {value}, outside [0, 1]; scale scores to [0, 1] "
            "(e.g. divide a percentage by 100, a 1-10 rating: (x - 1) / 9)"
        )
    return float(value)


def _text(obj: dict, key: str, where: str, *, required: bool, fix: str) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise OutcomesError(f"{where}: field '{key}' is missing or null; {fix}")
        return None
    if not isinstance(value, str) or not value.strip():
        raise OutcomesError(
            f"{where}: field '{key}' must be a non-empty string, got {json.dumps(value)} "
            f"({_kind(value)}); {fix}"
        )
    return value


def parse_question(obj: object, where: str = "record") -> Question:
    """Validate one decoded JSON object; `where` names it in error messages (e.g. 'a.jsonl:12')."""
    if not isinstance(obj, dict):
        raise OutcomesError(
            f"{where}: expected a JSON object, got {_kind(obj)}; write one object per line, "
            f"e.g. {_EXAMPLE}"
        )
    for key in ("id", "prompt", "outcomes"):
        if key not in obj:
            raise OutcomesError(
                f"{where}: missing field '{key}' (present: {sorted(obj)}); every line needs "
                f"'id', 'prompt' and 'outcomes', e.g. {_EXAMPLE}"
            )
    raw_id = obj["id"]
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        raw_id = str(raw_id)
    if not isinstance(raw_id, str) or not raw_id:
        raise OutcomesError(
            f"{where}: field 'id' must be a non-empty string or an integer, got "
            f"{json.dumps(obj['id'])} ({_kind(obj['id'])}); give each line a unique id"
        )
    prompt = _text(obj, "prompt", where, required=True, fix="give the query text the router reads")
    category = _text(
        obj,
        "category",
        where,
        required=False,
        fix=f"give a label such as the dataset's name, or leave it out ('{DEFAULT_CATEGORY}')",
    )
    answer = _text(
        obj, "answer", where, required=False, fix='quote the gold answer ("42") or leave it out'
    )

    outcomes = obj["outcomes"]
    if not isinstance(outcomes, dict):
        raise OutcomesError(
            f"{where}: 'outcomes' must be an object mapping model name to score, got "
            f'{_kind(outcomes)}; e.g. {{"model-a": 1, "model-b": 0.25, "model-c": null}}'
        )
    scores = {}
    for model, value in outcomes.items():
        score = _score(model, value, where)
        if score is not None:
            scores[model] = score

    predictions = obj.get("predictions")
    if predictions is None:
        predictions = {}
    if not isinstance(predictions, dict):
        raise OutcomesError(
            f"{where}: 'predictions' must be an object mapping model name to its answer (a "
            f"string or null), got {_kind(predictions)}; or leave it out"
        )
    for model, value in predictions.items():
        if value is not None and not isinstance(value, str):
            raise OutcomesError(
                f"{where}: prediction of '{model}' is {json.dumps(value)} ({_kind(value)}); "
                'write the answer as a string ("42") or null'
            )
    return Question(
        id=raw_id,
        category=category or DEFAULT_CATEGORY,
        prompt=prompt or "",
        answer=answer,
        outcomes=scores,
        predictions=dict(predictions),
    )


def load_outcomes(path: str | Path) -> list[Question]:
    """Read an outcomes file (`.jsonl` or `.jsonl.gz`); errors name the file and line number."""
    path = Path(path)
    if not path.is_file():
        raise OutcomesError(f"outcomes file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    questions: list[Question] = []
    first_line: dict[str, int] = {}
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise OutcomesError(
                        f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); each line "
                        f"must be one complete JSON object, e.g. {_EXAMPLE}"
                    ) from None
                question = parse_question(obj, where)
                if question.id in first_line:
                    raise OutcomesError(
                        f"{where}: duplicate id '{question.id}' (first at line "
                        f"{first_line[question.id]}); ids must be unique within a file"
                    )
                first_line[question.id] = lineno
                questions.append(question)
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise OutcomesError(
            f"cannot read {path}: {exc}; the file must be UTF-8 JSON lines, gzipped only when "
            "its name ends in .gz"
        ) from None
    if not questions:
        raise OutcomesError(f"{path}: no records (expected one JSON object per line)")
    return questions
