"""A fitted routing policy as a file: `.npz` arrays plus a JSON manifest, no pickle.

    save_policy(policy, "policy.npz", encoder=..., experts=[...], fitted_on={...})
    artifact = load_policy("policy.npz")      # -> PolicyArtifact(policy, manifest)

One `.npz` holds everything: every array of the fitted policy, and the manifest as a JSON string
under `manifest.json`. A copy of the manifest is written beside it (`policy.manifest.json`) for
people; loading reads the `.npz` only. The manifest names:

| key          | meaning                                                                      |
|--------------|------------------------------------------------------------------------------|
| `format`     | `quorum.routing-policy/1`                                                    |
| `kind`       | the policy's name in `router.policies.POLICIES`                              |
| `version`    | content hash (12 hex) + creation time: what the service reports it routes with |
| `encoder`    | the embedding model the policy was fitted on (must equal the live encoder's) |
| `experts`    | column order of the policy's quality matrix (registered expert names)        |
| `fitted_on`  | where the training outcomes came from: source, rows, known outcomes, feedback |
| `calibration`| how a target cost becomes λ: cross-fitted quality of the training rows, kept  |
|              | as the array `calibration.quality` `[N, E]`                                  |

The policy's attributes are written as a tree: arrays go into the `.npz`, numbers, strings and
lists into the manifest's `state`, and nested objects only if their class is one of
`SERIALISABLE` (policies, `SkillCentroids`, `LogisticModel`). A fitted scikit-learn logistic
regression is stored as its coefficients and restored as `LogisticModel`, which predicts the same.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experts.errors import QuorumError
from router.policies import POLICIES, RoutingPolicy, SkillCentroids

__all__ = [
    "FORMAT",
    "LogisticModel",
    "PolicyArtifact",
    "PolicyArtifactError",
    "artifact_bytes",
    "load_policy",
    "policy_from_bytes",
    "save_policy",
    "write_artifact",
]

FORMAT = "quorum.routing-policy/1"
MANIFEST_KEY = "manifest.json"
CALIBRATION_KEY = "calibration.quality"


class PolicyArtifactError(QuorumError):
    """A policy artifact that cannot be read, or does not fit the registry it is served with."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_policy_artifact"


class LogisticModel:
    """A binary logistic regression by its coefficients: what a fitted one is saved as."""

    def __init__(self, coef: np.ndarray, intercept: np.ndarray) -> None:
        self.coef = np.asarray(coef, dtype=np.float64).reshape(-1)  # [F]
        self.intercept = np.asarray(intercept, dtype=np.float64).reshape(1)  # [1]

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-(np.asarray(x, dtype=np.float64) @ self.coef + self.intercept)))
        return np.stack([1.0 - p, p], axis=1)  # [N, 2], sklearn's layout


#: Classes whose instances may appear in a saved policy's state, by name.
SERIALISABLE: dict[str, type] = {
    **{cls.__name__: cls for cls in POLICIES.values()},
    "SkillCentroids": SkillCentroids,
    "LogisticModel": LogisticModel,
}


@dataclass(frozen=True)
class PolicyArtifact:
    policy: RoutingPolicy
    manifest: dict
    calibration_quality: np.ndarray | None = None  # [N, E] cross-fitted, for target costs

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def experts(self) -> list[str]:
        return list(self.manifest["experts"])


# -- the state tree ---------------------------------------------------------------------------------


def _encode(value: Any, path: str, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise PolicyArtifactError(f"cannot save {path}: an object array")
        arrays[path] = value
        return {"__array__": path}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_encode(v, f"{path}.{i}", arrays) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise PolicyArtifactError(f"cannot save {path}: dict keys must be strings")
        return {"__dict__": {k: _encode(v, f"{path}.{k}", arrays) for k, v in value.items()}}
    if hasattr(value, "coef_") and hasattr(value, "intercept_"):  # a fitted sklearn classifier
        if np.asarray(value.coef_).shape[0] != 1:
            raise PolicyArtifactError(f"cannot save {path}: only binary logistic models")
        value = LogisticModel(value.coef_, value.intercept_)
    name = type(value).__name__
    if SERIALISABLE.get(name) is not type(value):
        raise PolicyArtifactError(
            f"cannot save {path}: a {name} is not one of {', '.join(sorted(SERIALISABLE))}; keep "
            "a policy's fitted state as arrays, numbers and lists"
        )
    attrs = {k: _encode(v, f"{path}.{k}", arrays) for k, v in vars(value).items()}
    return {"__object__": name, "attrs": attrs}


def _decode(node: Any, arrays: Any) -> Any:
    if isinstance(node, list):
        return [_decode(v, arrays) for v in node]
    if not isinstance(node, dict):
        return node
    if "__array__" in node:
        return arrays[node["__array__"]]
    if "__dict__" in node:
        return {k: _decode(v, arrays) for k, v in node["__dict__"].items()}
    cls = SERIALISABLE.get(node.get("__object__", ""))
    if cls is None:
        raise PolicyArtifactError(f"unknown object {node.get('__object__')!r} in the policy state")
    obj = cls.__new__(cls)
    for key, value in node["attrs"].items():
        setattr(obj, key, _decode(value, arrays))
    return obj


# -- save / load ------------------------------------------------------------------------------------


def artifact_bytes(
    policy: RoutingPolicy,
    *,
    encoder: str,
    experts: Sequence[str],
    fitted_on: dict,
    calibration_quality: np.ndarray | None = None,
) -> tuple[bytes, dict]:
    """The `.npz` bytes of a fitted policy and its manifest (without the state tree)."""
    if type(policy).__name__ not in SERIALISABLE:
        raise PolicyArtifactError(f"cannot save a {type(policy).__name__}: not a known policy")
    arrays: dict[str, np.ndarray] = {}
    state = _encode(policy, "policy", arrays)
    if calibration_quality is not None:
        arrays[CALIBRATION_KEY] = np.asarray(calibration_quality, dtype=np.float64)
    digest = hashlib.sha256(json.dumps(state, sort_keys=True).encode())
    for key in sorted(arrays):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    manifest = {
        "format": FORMAT,
        "kind": policy.name,
        "version": f"{digest.hexdigest()[:12]}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "encoder": encoder,
        "experts": list(experts),
        "fitted_on": fitted_on,
        "calibration": (
            {"quality": CALIBRATION_KEY, "rows": len(calibration_quality),
             "method": "cross-fitted predictions of the training rows; λ for a target cost is "
                       "the smallest whose average cost on them is within the target"}
            if calibration_quality is not None else None
        ),
    }  # fmt: skip
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer, **arrays, **{MANIFEST_KEY: np.array(json.dumps({**manifest, "state": state}))}
    )
    return buffer.getvalue(), manifest


def write_artifact(path: str | Path, raw: bytes, manifest: dict) -> Path:
    """Write artifact bytes to `path` (`.npz`, atomically) and `<stem>.manifest.json` beside it."""
    path = Path(path)
    if path.suffix != ".npz":
        raise PolicyArtifactError(f"a policy artifact is an .npz file; got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(raw)
    tmp.replace(path)
    path.with_suffix(".manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return path


def save_policy(policy: RoutingPolicy, path: str | Path, **meta: Any) -> dict:
    """Write a fitted policy to `path`; returns the manifest. `meta`: `encoder`, `experts`,
    `fitted_on`, optional `calibration_quality` (see `artifact_bytes`)."""
    raw, manifest = artifact_bytes(policy, **meta)
    write_artifact(path, raw, manifest)
    return manifest


def policy_from_bytes(raw: bytes, where: str = "policy artifact") -> PolicyArtifact:
    """Read an artifact's bytes; errors name `where` and what is wrong."""
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, EOFError) as exc:
        raise PolicyArtifactError(f"{where}: not a policy artifact (.npz): {exc}") from None
    if MANIFEST_KEY not in arrays:
        raise PolicyArtifactError(f"{where}: no {MANIFEST_KEY}; write it with save_policy")
    manifest = json.loads(str(arrays.pop(MANIFEST_KEY)))
    if manifest.get("format") != FORMAT:
        raise PolicyArtifactError(
            f"{where}: format {manifest.get('format')!r}; this Quorum reads {FORMAT!r}"
        )
    policy = _decode(manifest.pop("state"), arrays)
    if not isinstance(policy, RoutingPolicy):
        raise PolicyArtifactError(f"{where}: the state is not a routing policy")
    return PolicyArtifact(policy, manifest, arrays.get(CALIBRATION_KEY))


def load_policy(path: str | Path) -> PolicyArtifact:
    path = Path(path)
    if not path.is_file():
        raise PolicyArtifactError(
            f"policy artifact not found: {path}; write one with `quorum fit-policy`"
        )
    return policy_from_bytes(path.read_bytes(), str(path))
