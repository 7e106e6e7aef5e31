"""Knowledge about experts: state store, validation sets, profiling, routing-quality evaluation."""

from skills.store import PROFILE_KEY, InMemoryStateStore, StateStore

__all__ = ["PROFILE_KEY", "InMemoryStateStore", "StateStore"]
