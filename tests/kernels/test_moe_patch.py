from __future__ import annotations

import pytest
import torch
from torch import nn

from experts.moe.kernels.reference import rel_err
from experts.moe.patch import TritonSparseMoeBlock, patch_moe

transformers = pytest.importorskip("transformers")

HIDDEN, INTER = 32, 16


def _mixtral():
    from transformers.models.mixtral import modeling_mixtral as m

    cfg = m.MixtralConfig(hidden_size=HIDDEN, intermediate_size=INTER, num_local_experts=8,
                          num_experts_per_tok=2)
    return cfg, m.MixtralSparseMoeBlock(cfg)


def _qwen3(norm: bool):
    from transformers.models.qwen3_moe import modeling_qwen3_moe as m

    cfg = m.Qwen3MoeConfig(hidden_size=HIDDEN, moe_intermediate_size=INTER, num_experts=16,
                           num_experts_per_tok=4, norm_topk_prob=norm)
    return cfg, m.Qwen3MoeSparseMoeBlock(cfg)


def _olmoe():
    from transformers.models.olmoe import modeling_olmoe as m

    cfg = m.OlmoeConfig(hidden_size=HIDDEN, intermediate_size=INTER, num_experts=8,
                        num_experts_per_tok=3, norm_topk_prob=False)
    return cfg, m.OlmoeSparseMoeBlock(cfg)


def _deepseek_v3():
    from transformers.models.deepseek_v3 import modeling_deepseek_v3 as m

    cfg = m.DeepseekV3Config(hidden_size=HIDDEN, moe_intermediate_size=INTER, n_routed_experts=16,
                             num_experts_per_tok=4, n_group=4, topk_group=2, n_shared_experts=1,
                             routed_scaling_factor=2.5, norm_topk_prob=True)
    return cfg, m.DeepseekV3MoE(cfg)


BLOCKS = {
    "mixtral": _mixtral,
    "qwen3_moe": lambda: _qwen3(True),
    "qwen3_moe_no_norm": lambda: _qwen3(False),
    "olmoe": _olmoe,
    "deepseek_v3": _deepseek_v3,
}


class _Holder(nn.Module):
    def __init__(self, config, block: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.mlp = block


@pytest.mark.parametrize("name", list(BLOCKS))
def test_patched_block_equals_original(name: str, device: torch.device) -> None:
    torch.manual_seed(0)
    cfg, block = BLOCKS[name]()
    for p in block.parameters():
        nn.init.normal_(p, std=0.2)
    gate = block.gate
    if hasattr(gate, "e_score_correction_bias"):
        gate.e_score_correction_bias.normal_(std=0.05)
    holder = _Holder(cfg, block).to(device).eval()
    x = torch.randn(2, 7, HIDDEN, device=device)
    with torch.no_grad():
        want = holder.mlp(x)
        assert patch_moe(holder) == 1
        assert isinstance(holder.mlp, TritonSparseMoeBlock)
        got = holder.mlp(x)
    assert got.shape == want.shape
    assert rel_err(got, want) < 2e-5


def test_patch_whole_tiny_model(device: torch.device) -> None:
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    cfg = MixtralConfig(hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                        num_experts_per_tok=2, vocab_size=64)
    model = MixtralForCausalLM(cfg).to(device).eval()
    ids = torch.randint(0, 64, (1, 6), device=device)
    with torch.no_grad():
        want = model(ids).logits
        assert patch_moe(model) == 2
        got = model(ids).logits
    assert rel_err(got, want) < 2e-5
