"""Fitted routing policies in the state store: publish one, and serve whichever is current.

    quorum fit-policy ... --publish        # writes the artifact and makes it current
    StorePolicySource(store, registry, encoder, fallback)   # what the live router asks

Keys: `quorum:policy:current` holds the current policy's manifest (with its `version`);
`quorum:policy:artifact:<version>` holds the artifact itself (the `.npz` bytes, base64). Running
routers read the small current key at most once per `check_every_s` and load the artifact only when
the version changes, so a publish reaches every ingress replica within about a second and costs
nothing per request. A published policy that does not fit a router's registry (an expert without
outcomes, another encoder) is refused by that router with one log line; it keeps what it had.
"""

from __future__ import annotations

import base64
import logging
import threading
import time

from experts.registry import Registry
from router.artifact import PolicyArtifactError, policy_from_bytes
from router.live_policy import ServedPolicy
from skills.store import StateStore

__all__ = ["CURRENT_KEY", "StorePolicySource", "publish_policy", "published_manifest"]

log = logging.getLogger(__name__)

CURRENT_KEY = "quorum:policy:current"
ARTIFACT_PREFIX = "quorum:policy:artifact:"


def publish_policy(store: StateStore, raw: bytes, manifest: dict) -> None:
    """Store the artifact, then make it current (readers never see a version without its bytes)."""
    version = manifest["version"]
    store.put_json(ARTIFACT_PREFIX + version, {"npz_base64": base64.b64encode(raw).decode()})
    store.put_json(CURRENT_KEY, manifest)


def published_manifest(store: StateStore) -> dict | None:
    return store.get_json(CURRENT_KEY)


class StorePolicySource:
    """The published policy when there is one that fits, else `fallback` (the registry's
    `router.policy`, or None for profile/registry competence)."""

    def __init__(
        self,
        store: StateStore,
        registry: Registry,
        encoder: str,
        fallback: ServedPolicy | None = None,
        check_every_s: float = 1.0,
        clock=time.monotonic,
    ) -> None:
        self.store = store
        self.registry = registry
        self.encoder = encoder
        self.fallback = fallback
        self.check_every_s = check_every_s
        self.clock = clock
        self._lock = threading.Lock()
        self._checked = float("-inf")
        self._version: str | None = None  # the published version last looked at
        self._published: ServedPolicy | None = None

    def current_policy(self) -> ServedPolicy | None:
        now = self.clock()
        if now - self._checked >= self.check_every_s and self._lock.acquire(blocking=False):
            try:
                self._checked = now
                self._refresh()
            finally:
                self._lock.release()
        return self._published or self.fallback

    def _refresh(self) -> None:
        try:
            manifest = self.store.get_json(CURRENT_KEY)
        except Exception as exc:  # the store is down: keep routing with what we have
            log.warning("cannot read the published routing policy: %s", exc)
            return
        version = (manifest or {}).get("version")
        if version == self._version:
            return
        self._version = version
        if version is None:
            self._published = None
            return
        try:
            blob = self.store.get_json(ARTIFACT_PREFIX + version)
            if not blob:
                raise PolicyArtifactError(
                    f"published policy {version} has no artifact in the store"
                )
            raw = base64.b64decode(blob["npz_base64"])
            artifact = policy_from_bytes(raw, f"published policy {version}")
            self._published = ServedPolicy(artifact, self.registry, self.encoder)
            log.info("routing with published policy %s", self._published.source)
        except PolicyArtifactError as exc:
            log.error("ignoring published routing policy %s: %s", version, exc.message)
        except Exception as exc:
            log.error("ignoring published routing policy %s: %s", version, exc)
