"""Tiny randomly initialised MoE LLMs written as Hugging Face folders, for vLLM CPU tests.

Each folder carries SmolLM2's tokenizer and chat template (the built-in model Quorum already
prepares under $QUORUM_HOME/models), so vLLM and Quorum's chat path take it like any expert.
Sizes are the smallest vLLM's CPU build runs: hidden 64 (its MoE kernels need multiples of 32),
two heads of 32, two layers of 8 experts with top-2 routing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
NUM_LAYERS = 2


def _common(tokenizer_dir: Path) -> dict:
    src = json.loads((tokenizer_dir / "config.json").read_text())
    return dict(
        vocab_size=src["vocab_size"], bos_token_id=src.get("bos_token_id"),
        eos_token_id=src.get("eos_token_id"), pad_token_id=src.get("pad_token_id"),
        hidden_size=64, num_hidden_layers=NUM_LAYERS, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, max_position_embeddings=1024,
        tie_word_embeddings=False, initializer_range=0.1,
    )  # fmt: skip


def _config(kind: str, tokenizer_dir: Path):
    from transformers import MixtralConfig, Qwen3MoeConfig

    common = _common(tokenizer_dir)
    if kind == "mixtral":  # softmax top-2, renormalised
        return MixtralConfig(intermediate_size=64, num_local_experts=8, num_experts_per_tok=2,
                             **common)  # fmt: skip
    if kind == "qwen3_moe":  # softmax top-2, not renormalised (norm_topk_prob=False)
        return Qwen3MoeConfig(moe_intermediate_size=64, intermediate_size=128, num_experts=8,
                              num_experts_per_tok=2, norm_topk_prob=False, decoder_sparse_step=1,
                              mlp_only_layers=[], **common)  # fmt: skip
    raise ValueError(f"unknown tiny MoE kind {kind!r}; use 'mixtral' or 'qwen3_moe'")


def write_tiny_moe(kind: str, out: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """Write a random `kind` ('mixtral' | 'qwen3_moe') model to `out` (float32 safetensors)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(kind, tokenizer_dir), dtype=torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, out / name)
    return out
