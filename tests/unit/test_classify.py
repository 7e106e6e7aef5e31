import json

import numpy as np
import pytest

from router.classify import HEADS, CentroidHead, EmbeddingSkillClassifier, Encoder, Head, load_head
from tests.conftest import KeywordEncoder

SKILLS = ["law", "math", "biology"]
TRAIN = {
    "math": ["solve the equation for x", "integral of x squared", "prime numbers and equation",
             "solve for x in the quadratic equation", "derivative of the polynomial"],
    "law": ["the court ruled the contract void", "plaintiff sued the defendant in court",
            "the statute and the contract", "a tort claim in court", "the judge and the jury"],
    "biology": ["the cell divides by mitosis", "dna replication in the cell", "enzymes in the cell",
                "protein synthesis and dna", "the mitochondria of a cell"],
}  # fmt: skip


def _data(encoder):
    texts, labels = [], []
    for skill, rows in TRAIN.items():
        texts += rows
        labels += [SKILLS.index(skill)] * len(rows)
    return encoder.encode(texts), np.array(labels)


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_head_learns_skills_and_round_trips_through_json(kind):
    encoder = KeywordEncoder()
    x, y = _data(encoder)
    head = HEADS[kind].fit(SKILLS, x, y)
    clf = EmbeddingSkillClassifier(encoder, head)
    scores = clf.classify(
        ["solve this equation for x", "the court and the contract", "dna in a cell"]
    )
    assert [scores.skills[i] for i in scores.probs.argmax(1)] == ["math", "law", "biology"]
    np.testing.assert_allclose(scores.probs.sum(1), 1.0, rtol=1e-5)
    again = Head.from_json(head.to_json(note="x"))
    assert again.kind == kind and again.meta == {"note": "x"}
    np.testing.assert_allclose(again.predict_proba(x), head.predict_proba(x), atol=1e-5)


class FirstAxisEncoder(Encoder):
    """Every text embeds to the first basis vector, i.e. onto the first skill's centroid."""

    def encode(self, texts, batch_size=64):
        return np.eye(3, 4, dtype=np.float32)[:1].repeat(len(texts), 0)


def test_confidence_is_one_for_certain_and_zero_for_uniform():
    sharp = CentroidHead(SKILLS, np.eye(3, 4), temperature=1e-4)
    assert EmbeddingSkillClassifier(FirstAxisEncoder(), sharp).classify(["x"]).confidence[0] == (
        pytest.approx(1.0, abs=1e-3)
    )
    flat = CentroidHead(SKILLS, np.eye(3, 4), temperature=1e6)
    assert EmbeddingSkillClassifier(FirstAxisEncoder(), flat).classify(["x"]).confidence[0] == (
        pytest.approx(0.0, abs=1e-3)
    )


def test_unknown_head_kind_is_named(tmp_path):
    path = tmp_path / "h.json"
    path.write_text(json.dumps({"kind": "forest", "skills": SKILLS, "params": {}}))
    with pytest.raises(ValueError, match="unknown head kind 'forest'"):
        load_head(str(path))


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_builtin_heads_cover_the_mmlu_pro_skills_and_record_held_out_accuracy(kind):
    from experts.registry import MMLU_PRO_SKILLS

    head = load_head("builtin", kind)
    assert head.skills == MMLU_PRO_SKILLS
    assert head.meta["held_out_accuracy"] >= 0.6
    assert head.meta["encoder"].startswith("all-MiniLM-L6-v2")
