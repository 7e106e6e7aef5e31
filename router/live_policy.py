"""The fitted policy the live router serves: an artifact bound to the registry it runs with.

`ServedPolicy` checks that the artifact fits the registry (every registered expert has a column,
the encoder is the live one), reorders the policy's quality columns into registry order, and turns
a target cost into the cost knob λ with the artifact's calibration. `PolicySource` is where the
recruiter gets the current one: `StaticPolicySource` (the registry's `router.policy`) here, and a
state-store source that hot-reloads published policies in `skills/policy_store.py`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from experts.registry import Registry
from router.artifact import PolicyArtifact, PolicyArtifactError, load_policy
from router.recruit import PolicySource, calibrate_quality

__all__ = ["PolicySource", "ServedPolicy", "StaticPolicySource", "load_served_policy"]


class ServedPolicy:
    """A fitted policy, columns in the registry's expert order, with target-cost calibration."""

    def __init__(self, artifact: PolicyArtifact, registry: Registry, encoder: str) -> None:
        names = [e.name for e in registry.experts]
        missing = [n for n in names if n not in artifact.experts]
        if missing:
            raise PolicyArtifactError(
                f"routing policy {artifact.version} has no outcomes for expert(s) "
                f"{', '.join(missing)} (it was fitted for {', '.join(artifact.experts)}); refit it "
                "for this registry (`quorum fit-policy`) or remove router.policy",
                code="policy_registry_mismatch",
            )
        if artifact.manifest.get("encoder") != encoder:
            raise PolicyArtifactError(
                f"routing policy {artifact.version} was fitted on embeddings of "
                f"{artifact.manifest.get('encoder')!r}, but this router embeds with {encoder!r}; "
                "refit it with the router's encoder (`quorum fit-policy`)",
                code="policy_encoder_mismatch",
            )
        self.artifact = artifact
        self.columns = np.array([artifact.experts.index(n) for n in names])  # registry -> policy
        self.source = f"policy:{artifact.kind}@{artifact.version}"
        self._knobs: dict[tuple, float] = {}
        self._lock = threading.Lock()

    @property
    def version(self) -> str:
        return self.artifact.version

    def quality(self, embeddings: np.ndarray) -> np.ndarray:
        """`[N, E]` predicted quality, E in registry order."""
        q = self.artifact.policy.predict_quality(np.atleast_2d(embeddings))
        return np.clip(q[:, self.columns], 0.0, 1.0)

    def knob(self, candidates: Sequence[int], cost: np.ndarray, target: float) -> float | None:
        """λ that spends `target` x the most expensive candidate's cost on average, calibrated on
        the artifact's cross-fitted training predictions; None when it has no calibration."""
        calibration = self.artifact.calibration_quality
        if calibration is None:
            return None
        key = (tuple(candidates), tuple(np.round(cost, 9)), round(target, 9))
        with self._lock:
            if key not in self._knobs:
                quality = calibration[:, self.columns[list(candidates)]]
                known = ~np.isnan(quality).any(axis=1)
                self._knobs[key] = calibrate_quality(quality[known], cost, target)
            return self._knobs[key]


class StaticPolicySource:
    """One policy for the process's lifetime (the registry's `router.policy`), or none."""

    def __init__(self, policy: ServedPolicy | None = None) -> None:
        self.policy = policy

    def current_policy(self) -> ServedPolicy | None:
        return self.policy


def load_served_policy(registry: Registry, encoder: str) -> ServedPolicy | None:
    """The registry's `router.policy` artifact, checked against the registry; None if not set."""
    config = registry.router.policy
    if config is None:
        return None
    artifact = load_policy(config.artifact)
    if config.kind is not None and artifact.kind != config.kind:
        raise PolicyArtifactError(
            f"{config.artifact} holds a {artifact.kind!r} policy but router.policy.kind is "
            f"{config.kind!r}; fix the kind or point artifact at a {config.kind!r} policy",
            code="policy_kind_mismatch",
        )
    return ServedPolicy(artifact, registry, encoder)
