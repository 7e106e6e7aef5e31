"""The vLLM plugin's vLLM-free parts: engine arguments per `moe_kernels`, stats, registry field."""

from __future__ import annotations

import pytest

from experts.errors import RegistryError
from experts.moe.vllm_plugin import CONFIG_KEY, engine_kwargs, sum_stats
from experts.registry import parse_registry


def test_vllm_kernels_leave_engine_arguments_alone():
    kwargs = {"enforce_eager": True}
    assert engine_kwargs("vllm", kwargs) is kwargs


def test_quorum_kernels_opt_the_engine_in_and_keep_the_users_settings():
    out = engine_kwargs("quorum", {"additional_config": {"x": 1}, "dtype": "float32"})
    assert out["additional_config"] == {"x": 1, CONFIG_KEY: "quorum"}
    assert out["worker_extension_cls"] == "experts.moe.vllm_plugin.QuorumWorkerExtension"
    assert out["dtype"] == "float32"
    mine = engine_kwargs("quorum", {"worker_extension_cls": "my.Ext"})
    assert mine["worker_extension_cls"] == "my.Ext"  # the user's extension wins


def test_unknown_moe_kernels_value_is_refused():
    with pytest.raises(ValueError, match="moe_kernels='triton'"):
        engine_kwargs("triton", {})


def test_stats_of_workers_add_up():
    total = sum_stats([
        {"calls": 3, "layers": 2, "fallbacks": {"LoRA": 1}},
        {"calls": 4, "layers": 2, "fallbacks": {"LoRA": 1, "EP": 2}},
    ])  # fmt: skip
    assert total == {"calls": 7, "layers": 4, "fallbacks": {"LoRA": 2, "EP": 2}}


def test_registry_moe_kernels_defaults_to_vllm_and_is_for_hosted_experts():
    reg = parse_registry({"experts": [{"name": "a", "model": "m"},
                                      {"name": "b", "model": "m", "moe_kernels": "quorum"}]})  # fmt: skip
    assert [e.moe_kernels for e in reg.experts] == ["vllm", "quorum"]
    with pytest.raises(RegistryError, match="moe_kernels"):
        parse_registry({"experts": [{"name": "a", "model": "m", "moe_kernels": "fast"}]})
    with pytest.raises(RegistryError, match="hosted"):
        parse_registry({"experts": [{"name": "a", "model": "m", "backend": "openai",
                                     "base_url": "http://h/v1", "moe_kernels": "quorum"}]})  # fmt: skip
