"""Outcome data as arrays over a pool of experts (`OutcomeTable`), and the models file.

The outcomes file format (scores in [0, 1], missing outcomes, optional category, answer and
predictions) and its parser live in skills/outcome_format.py and are re-exported here.
`models.yaml` gives each model's `active_b` (active parameters, the serving-cost proxy) and the
`reference_pool`; see skills/data/mmlu_pro_models.yaml. Only pool models are read from the
outcomes: a model in the data but not in the pool is ignored, a pool model missing from
models.yaml or without any outcome in the data is an error.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel, Field, ValidationError

from skills.outcome_format import (
    DEFAULT_CATEGORY,
    OutcomesError,
    Question,
    load_outcomes,
    parse_question,
)

__all__ = [
    "DEFAULT_CATEGORY",
    "ModelInfo",
    "ModelsFile",
    "OutcomeTable",
    "OutcomesError",
    "Question",
    "load_models",
    "load_outcomes",
    "models_in",
    "parse_question",
]


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

    def resolve_pool(
        self, names: Sequence[str] | None = None, in_data: Collection[str] | None = None
    ) -> list[str]:
        """The pool to route over, checked to have known costs: `names`, else `reference_pool`,
        else (when `in_data` is given) every model of this file with an `active_b` that has
        outcomes in the data, in this file's order."""
        pool = list(names) if names else list(self.reference_pool)
        if not pool and in_data is not None:
            pool = [n for n, m in self.models.items() if m.active_b and n in in_data]
        if not pool:
            why = "empty pool: pass --pool NAMES or set reference_pool in models.yaml"
            if in_data is not None:
                why += (
                    "; no model of models.yaml with an active_b has outcomes in the data "
                    f"(models in the data: {', '.join(sorted(in_data))})"
                )
            raise OutcomesError(why)
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
    | correct     | [N, E] | float64 | score in [0, 1], NaN where it is unknown    |
    | predictions | [N, E] | object  | the expert's answer, None if none/unknown   |
    | answers     | [N]    | object  | gold answer, None if the row has none       |
    | categories  | [N]    | object  | category label                              |

    `correct` is named for 0/1 outcomes; with fractional scores its mean is the mean score.
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
                f"{', '.join(sorted(models_in(questions)))}; leave them out of --pool (or "
                "reference_pool), or check the model names match the outcomes' keys"
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

    @property
    def binary(self) -> bool:
        """Every known outcome is 0 or 1 (else the scores are fractional)."""
        known = self.correct[~np.isnan(self.correct)]
        return bool(np.isin(known, (0.0, 1.0)).all())


def models_in(questions: Sequence[Question]) -> set[str]:
    """Every model with at least one known outcome in `questions`."""
    return {m for q in questions for m in q.outcomes}
