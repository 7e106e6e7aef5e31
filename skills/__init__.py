"""Knowledge about experts: state store, validation sets, profiling, routing-quality evaluation.

    StateStore / InMemoryStateStore / RedisStateStore   shared state (profiles, statistics)
    load_validation_set, GRADERS                         labelled sets and their graders
    python -m skills.profile (quorum profile)            measure competence per skill (Ray job)
    python -m skills.routing_eval (quorum eval-routing)  routing quality on outcome data
    python -m skills.taxonomy (quorum train-classifier)  skills + classifier head from outcome data
"""

from skills.redis_store import RedisStateStore, StateStoreUnavailableError
from skills.store import PROFILE_KEY, InMemoryStateStore, StateStore
from skills.validation import GRADERS, load_validation_set

__all__ = [
    "GRADERS",
    "PROFILE_KEY",
    "InMemoryStateStore",
    "RedisStateStore",
    "StateStore",
    "StateStoreUnavailableError",
    "load_validation_set",
]
