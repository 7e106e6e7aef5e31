"""vLLM plugin: Quorum's MoE layer as vLLM's unquantized fused-MoE method.

Declared in pyproject.toml as a `vllm.general_plugins` entry point, so vLLM calls `register()`
in every process it starts (front end, engine core, workers). `register()` installs
`QuorumFusedMoEMethod` as the out-of-tree replacement of vLLM's `UnquantizedFusedMoEMethod`
(`CustomOp.register_oot`); vLLM then builds one instance per MoE layer, and each decides when
the model's weights are loaded:

- engine not opted in (its `additional_config` lacks `quorum_moe_kernels: quorum`): the
  instance behaves as vLLM's own class (every override defers to it);
- opted in, layer supported: the method is monolithic, so vLLM hands it the router logits and
  `apply_monolithic(layer, x, router_logits)` runs `experts.moe.fused.fused_moe_forward` on the
  weights vLLM loaded (vLLM's own weight post-processing, e.g. the CPU backend's prepacking,
  is skipped, so the tensors stay in checkpoint layout and are never copied);
- opted in, layer not supported (`experts.moe.fused.unsupported_reason`: LoRA, expert
  parallelism, an activation other than SwiGLU, ...): vLLM's path, and one log line per reason.
  Quantized layers never reach this class: vLLM gives them their quantization's method.

The switch travels in the engine's own config (`additional_config`), not in an environment
variable: vLLM forks its engine process from one that has already loaded its plugins, so a
variable set per engine would not reliably reach them. `experts.engine.VLLMEngine` sets it for
experts with `moe_kernels: quorum`, with `QuorumWorkerExtension`, through which
`collective_rpc("quorum_moe_stats")` reads the counters of `experts.moe.fused.stats()` from the
process that runs the model.

Importing this module needs neither vLLM nor torch; `register()` imports vLLM.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CONFIG_KEY",
    "MOE_KERNELS",
    "QuorumWorkerExtension",
    "engine_kwargs",
    "register",
    "sum_stats",
]

#: Key in vLLM's `additional_config` that opts an engine in ("quorum"; anything else: off).
CONFIG_KEY = "quorum_moe_kernels"
_LOGGER = "vllm.quorum.moe"  # under "vllm": vLLM's handler prints it in every engine process

_registered: type | None = None

#: Values of the registry's `moe_kernels`: vLLM's own MoE kernels, or Quorum's layer.
MOE_KERNELS = ("vllm", "quorum")
_EXTENSION = "experts.moe.vllm_plugin.QuorumWorkerExtension"


def engine_kwargs(moe_kernels: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """`AsyncEngineArgs` fields for an engine with `moe_kernels` ("vllm": `kwargs` unchanged).

    "quorum" adds the opt-in key to `additional_config` and, unless `kwargs` names one, the
    worker extension that serves `collective_rpc("quorum_moe_stats")`.
    """
    if moe_kernels not in MOE_KERNELS:
        raise ValueError(f"moe_kernels={moe_kernels!r}; use one of {MOE_KERNELS}")
    if moe_kernels == "vllm":
        return kwargs
    extra = dict(kwargs.get("additional_config") or {}) | {CONFIG_KEY: "quorum"}
    return {"worker_extension_cls": _EXTENSION, **kwargs, "additional_config": extra}


class QuorumWorkerExtension:
    """Mixed into vLLM's worker class (`worker_extension_cls`); callable by collective_rpc."""

    def quorum_moe_stats(self) -> dict[str, Any]:
        from experts.moe.fused import stats

        return stats()


def sum_stats(per_worker: list[dict[str, Any]]) -> dict[str, Any]:
    """One `experts.moe.fused.stats()` dict from each worker's."""
    total: dict[str, Any] = {"calls": 0, "layers": 0, "fallbacks": {}}
    for s in per_worker:
        total["calls"] += s["calls"]
        total["layers"] += s["layers"]
        for reason, n in s["fallbacks"].items():
            total["fallbacks"][reason] = total["fallbacks"].get(reason, 0) + n
    return total


def _engine_opted_in() -> bool:
    from vllm.config import get_current_vllm_config

    extra = get_current_vllm_config().additional_config
    return isinstance(extra, dict) and extra.get(CONFIG_KEY) == "quorum"


def _method_class() -> type:
    import logging

    from vllm.model_executor.layers.fused_moe.fused_moe_method_base import FusedMoEMethodBase
    from vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method import (
        UnquantizedFusedMoEMethod,
    )

    from experts.moe import fused

    log = logging.getLogger(_LOGGER)

    class QuorumFusedMoEMethod(UnquantizedFusedMoEMethod):
        """vLLM's unquantized method; monolithic on Quorum's layer where the engine opted in
        and the layer is supported (decided in `process_weights_after_loading`)."""

        def __init__(self, moe: Any) -> None:
            super().__init__(moe)
            self.quorum_enabled = _engine_opted_in()
            self.quorum_routing: Any = None  # RoutingConfig once this layer runs on Quorum's

        @property
        def is_monolithic(self) -> bool:
            return self.quorum_routing is not None or super().is_monolithic

        def process_weights_after_loading(self, layer: Any) -> None:
            reason = fused.unsupported_reason(layer) if self.quorum_enabled else "off"
            if reason is None:
                FusedMoEMethodBase.process_weights_after_loading(self, layer)
                self.quorum_routing = fused.routing_config(layer)
                fused.LAYERS["quorum"] += 1
                if fused.LAYERS["quorum"] == 1:
                    log.info("Quorum MoE kernels: %s runs Quorum's Triton layer (%s)",
                             layer.layer_name, self.quorum_routing)  # fmt: skip
                return
            self.quorum_routing = None
            if reason != "off":
                fused.FALLBACKS[reason] = fused.FALLBACKS.get(reason, 0) + 1
                if fused.FALLBACKS[reason] == 1:
                    log.warning("Quorum MoE kernels: %s stays on vLLM's kernels: %s",
                                layer.layer_name, reason)  # fmt: skip
            super().process_weights_after_loading(layer)

        def apply_monolithic(
            self, layer: Any, x: Any, router_logits: Any, input_ids: Any = None
        ) -> Any:
            if self.quorum_routing is None:
                return super().apply_monolithic(layer, x, router_logits, input_ids)
            return fused.fused_moe_forward(layer, x, router_logits, self.quorum_routing)

    # vLLM looks replacements up by the replaced class's name; keep the in-tree op name so
    # `compilation_config.custom_ops` entries for "unquantized_fused_moe" still apply.
    UnquantizedFusedMoEMethod.register_oot(QuorumFusedMoEMethod)
    QuorumFusedMoEMethod.name = UnquantizedFusedMoEMethod.name
    return QuorumFusedMoEMethod


def register() -> None:
    """vLLM's plugin hook (entry point `quorum_moe`); idempotent, never raises into vLLM."""
    global _registered
    if _registered is not None:
        return
    import logging

    try:
        _registered = _method_class()
    except Exception as exc:  # a broken plugin must not stop vLLM: its own kernels still work
        logging.getLogger(_LOGGER).warning(
            "Quorum MoE kernels not registered (%s: %s); vLLM's own MoE kernels run",
            type(exc).__name__, exc,
        )  # fmt: skip
