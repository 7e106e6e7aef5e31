"""The router's encoders by registry name (`router.classifier.encoder`).

make_encoder("static")      # router/static_encoder.py: MiniLM distilled, ~0.1 ms a query
make_encoder("minilm")      # all-MiniLM-L6-v2, 256 tokens
make_encoder("minilm:64")   # the same, 64 tokens
"""

from __future__ import annotations

from router.classify import Encoder, MiniLMEncoder

__all__ = ["encoder_name", "make_encoder"]


def encoder_name(spec: str) -> str:
    """The name `make_encoder(spec).name` will have (what policy artifacts and heads record),
    without loading anything."""
    if spec == "static":
        from router.static_encoder import RECIPE

        return RECIPE
    name, _, length = spec.partition(":")
    if name == "minilm":
        return MiniLMEncoder.name_for(int(length) if length else 256)
    raise ValueError(f"unknown encoder {spec!r}; choose static, minilm or minilm:<max tokens>")


def make_encoder(spec: str) -> Encoder:
    if spec == "static":
        from router.static_encoder import StaticEncoder

        return StaticEncoder()
    name, _, length = spec.partition(":")
    if name == "minilm":
        return MiniLMEncoder(max_seq_length=int(length)) if length else MiniLMEncoder()
    raise ValueError(f"unknown encoder {spec!r}; choose static, minilm or minilm:<max tokens>")
