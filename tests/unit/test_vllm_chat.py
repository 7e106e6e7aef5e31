"""The pure part of experts/vllm_chat.py: vLLM's per-token logprobs in OpenAI's shape (the
vLLM-facing parts run in tests/integration/test_openai_params.py)."""

from __future__ import annotations

from dataclasses import dataclass

from experts.vllm_chat import openai_logprobs


@dataclass
class Logprob:  # the fields of vllm.logprobs.Logprob that the conversion reads
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


def test_logprobs_per_token_with_ranked_alternatives():
    steps = [
        {5: Logprob(-0.1, 1, "Par"), 9: Logprob(-2.5, 2, "Lon"), 3: Logprob(-4.0, 3, "Ber")},
        {7: Logprob(-1.2, 2, "is"), 8: Logprob(-0.4, 1, "es")},  # sampled the second best
    ]
    out = openai_logprobs([5, 7], steps, top=2)

    assert [e["token"] for e in out] == ["Par", "is"]
    assert [e["logprob"] for e in out] == [-0.1, -1.2]
    assert [[t["token"] for t in e["top_logprobs"]] for e in out] == [["Par", "Lon"], ["es", "is"]]
    assert out[0]["bytes"] == list(b"Par")


def test_logprobs_without_alternatives_and_forbidden_tokens():
    out = openai_logprobs([1], [{1: Logprob(float("-inf"), 4, "é")}], top=0)
    assert out == [{"token": "é", "logprob": -9999.0, "bytes": [195, 169], "top_logprobs": []}]
