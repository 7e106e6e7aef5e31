"""Reading experts' answers, voting over them, and asking one expert to synthesise the others':
written once, used by the live aggregation (`serving/aggregate.py`), the profiling job's graders
and aggregator measurements (`skills/validation.py`, `skills/profile.py`) and the offline routing
evaluation's k > 1 vote (`skills/routing_eval.py`), so what is measured is what the service does.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

import numpy as np

__all__ = ["AGGREGATE_HEADER", "competence_weights", "extract_answer", "extract_choice",
           "normalise_text", "parse_number", "synthesis_messages", "vote"]  # fmt: skip

#: Heads the list of other experts' answers in a synthesis prompt.
AGGREGATE_HEADER = "Answers proposed by other experts:"

_ANSWER_IS = re.compile(r"answer\s*(?:is|:)?\s*[:\-]?\s*[\(\[]?([A-Za-z])(?![A-Za-z])", re.I)


def _is_word(text: str, m: re.Match) -> bool:
    """Whether the letter matched by `m` is the English word "I" or "A"/"a" ("I think…")."""
    return m.group(1) in "AIa" and re.match(r" [a-z]", text[m.end() :]) is not None


def extract_choice(answer: str, choices: str = "ABCDEFGHIJ") -> str | None:
    """The chosen letter, or None when the answer names none of `choices`."""
    text = answer.strip()
    # "B", "(B)", "B.", "b) …": a letter that opens the answer.
    lead = re.match(r"[\s\(\[\*]*([A-Za-z])(?![A-Za-z])", text)
    if lead and lead.group(1).upper() in choices and not _is_word(text, lead):
        return lead.group(1).upper()
    said = _ANSWER_IS.search(text)
    if said and said.group(1).upper() in choices:
        return said.group(1).upper()
    # Else the first capital option letter standing alone ("I think C is right").
    for m in re.finditer(r"(?<![A-Za-z'])([A-Z])(?![A-Za-z'])", text):
        if m.group(1) in choices and not _is_word(text, m):
            return m.group(1)
    return None


_PUNCT = str.maketrans("", "", string.punctuation)


def normalise_text(text: str) -> str:
    """Lowercase, drop punctuation and English articles, collapse whitespace (SQuAD's rule)."""
    text = text.lower().translate(_PUNCT)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?")


def parse_number(text: str) -> float | None:
    """The last number in `text` ("1,234.5", "-3", "2/3", "1e-3", "45%" → 45), or None."""
    fractions = list(re.finditer(r"([-+]?\d+)\s*/\s*(\d+)", text))
    numbers = [m for m in _NUMBER.finditer(text) if re.search(r"\d", m.group())]
    if not numbers and not fractions:
        return None
    last_fraction = fractions[-1] if fractions else None
    last_number = numbers[-1] if numbers else None
    if last_fraction and (last_number is None or last_fraction.end() >= last_number.end()):
        den = int(last_fraction.group(2))
        return None if den == 0 else int(last_fraction.group(1)) / den
    return float(last_number.group().replace(",", ""))


def extract_answer(text: str, choices: str = "ABCDEFGHIJ") -> str | None:
    """The answer a text commits to, for voting: an option letter (`extract_choice`), else its
    last number ("... so x = 1,024." → "1024"); None when it commits to neither."""
    letter = extract_choice(text, choices)
    if letter is not None:
        return letter
    number = parse_number(text)
    if number is None:
        return None
    return str(int(number)) if number.is_integer() else repr(number)


def synthesis_messages(messages: Sequence[dict[str, str]], answers: Sequence[str]) -> list[dict[str, str]]:
    """The conversation with the experts' answers appended to the last user turn, asking the
    aggregator for the final answer."""
    listed = "\n".join(f"Expert {i + 1}: {a.strip() or '(no answer)'}" for i, a in enumerate(answers))
    out = [dict(m) for m in messages]
    users = [i for i, m in enumerate(out) if m.get("role") == "user"]
    last = users[-1] if users else len(out) - 1
    out[last]["content"] = (f"{out[last]['content']}\n\n{AGGREGATE_HEADER}\n{listed}\n\n"
                            "Weigh them and give the final answer in the format asked for.")  # fmt: skip
    return out


def competence_weights(quality: np.ndarray, n_choices: int = 10) -> np.ndarray:
    """Vote weights from predicted P(correct): the log-odds of being right vs one wrong option.

    For independent voters choosing among `n_choices` answers, weighting each by
    `log(q · (n_choices - 1) / (1 - q))` is the optimal weighted majority (Nitzan & Paroush,
    1982). Weights are floored at a small positive value so a recruited expert still counts.
    """
    q = np.clip(np.asarray(quality, dtype=np.float64), 1e-3, 1 - 1e-3)
    return np.maximum(np.log(q * (n_choices - 1) / (1.0 - q)), 1e-3)


def vote(answers: Sequence[str | None], weights: Sequence[float]) -> str | None:
    """Weighted plurality of the experts' answers; `None` answers abstain.

    Ties go to the answer backed by the earliest-listed expert (pass experts best first), so the
    result is deterministic. Returns None only when every expert abstained.
    """
    if len(answers) != len(weights):
        raise ValueError(f"got {len(answers)} answers but {len(weights)} weights")
    score: dict[str, float] = {}
    first: dict[str, int] = {}
    for i, (answer, weight) in enumerate(zip(answers, weights, strict=True)):
        if answer is None:
            continue
        score[answer] = score.get(answer, 0.0) + float(weight)
        first.setdefault(answer, i)
    if not score:
        return None
    return max(score, key=lambda a: (score[a], -first[a]))
