"""ResilientStateStore over a scripted primary that can go down, come back, or come back empty
(a Redis restart without persistence)."""

import pytest

from skills.redis_store import StateStoreUnavailableError
from skills.resilient_store import ResilientStateStore
from skills.store import InMemoryStateStore

PROFILE = {"version": "v1", "experts": {"a": {"skills": {"math": {"competence": 0.8}}}}}


class FlakyStore(InMemoryStateStore):
    """An in-memory 'Redis' whose calls fail while `down`; `restart()` wipes it like Redis without
    persistence. Counts calls so tests can see when the wrapper did not try it."""

    url = "redis://fake:6379/0"

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.calls = 0
        self.fail_after: int | None = None  # fail once this many more calls succeeded

    def _gate(self) -> None:
        self.calls += 1
        if self.fail_after is not None:
            if self.fail_after == 0:
                self.fail_after = None
                raise StateStoreUnavailableError("Redis went away mid-replay")
            self.fail_after -= 1
        if self.down:
            raise StateStoreUnavailableError("Redis at redis://fake is unreachable")

    def restart(self) -> None:
        self.__init__()

    def get_json(self, key):
        self._gate()
        return super().get_json(key)

    def put_json(self, key, value, ttl_s=None):
        self._gate()
        super().put_json(key, value, ttl_s)

    def incr(self, key, field, amount=1.0):
        self._gate()
        return super().incr(key, field, amount)

    def counters(self, key):
        self._gate()
        return super().counters(key)

    def profile_versions(self):
        return ["v1"]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup():
    primary, clock = FlakyStore(), Clock()
    return primary, ResilientStateStore(primary, retry_interval_s=1.0, clock=clock), clock


def test_up_it_writes_through_and_reads_from_the_primary(setup):
    primary, store, _ = setup
    store.publish_profile(PROFILE)
    store.put_json("job:1", {"state": "running"})
    assert primary.current_profile() == PROFILE and primary.get_json("job:1")["state"] == "running"
    primary.put_json("job:2", {"state": "done"})  # written by another process
    assert store.get_json("job:2") == {"state": "done"}
    assert store.incr("stats", "n", 2) == 2.0 and primary.counters("stats") == {"n": 2.0}


def test_down_it_keeps_serving_from_memory_and_replays_writes_in_order(setup):
    primary, store, clock = setup
    store.publish_profile(PROFILE)
    store.put_json("job:1", {"state": "running"})
    primary.down = True
    assert store.current_profile() == PROFILE  # served from the mirror
    assert store.get_json("job:1") == {"state": "running"}
    store.put_json("job:1", {"state": "done", "results": 20})
    store.publish_profile(PROFILE | {"version": "v2"})
    assert store.incr("stats", "n") == 1.0
    assert store.incr("stats", "n", 4) == 5.0
    assert not store.available and store.pending() == 4
    assert store.get_json("job:1")["state"] == "done"  # reads see the journaled writes
    primary.down = False
    primary.incr("stats", "n", 10)  # another process counted meanwhile
    clock.now += 1.0
    assert store.current_profile()["version"] == "v2"  # reconnected and replayed
    assert store.available and store.pending() == 0
    assert primary.get_json("job:1") == {"state": "done", "results": 20}
    assert primary.counters("stats") == {"n": 15.0}  # additive: nobody's increments lost


def test_reconnect_is_tried_at_most_once_per_interval(setup):
    primary, store, clock = setup
    primary.down = True
    store.get_json("k")
    calls = primary.calls
    for _ in range(50):
        store.get_json("k")
        store.put_json("k", 1)
    assert primary.calls == calls  # no request-path cost while Redis is away
    clock.now += 1.0
    store.get_json("k")
    assert primary.calls == calls + 1


def test_a_restarted_empty_redis_gets_the_profile_and_job_state_back(setup):
    primary, store, clock = setup
    store.publish_profile(PROFILE)
    store.put_json("job:7", {"state": "running", "done": 3})
    store.incr("stats", "requests", 42)
    primary.down = True
    store.put_json("job:7", {"state": "running", "done": 4})
    primary.restart()  # back, but empty
    clock.now += 1.0
    assert store.current_profile() == PROFILE
    assert primary.current_profile() == PROFILE
    assert primary.get_json("job:7") == {"state": "running", "done": 4}
    assert primary.counters("stats") == {"requests": 42.0}


def test_a_restart_seen_only_as_missing_keys_is_repaired_on_read(setup):
    primary, store, _ = setup
    store.publish_profile(PROFILE)
    store.put_json("job:1", {"state": "queued"})
    primary.restart()  # between two calls: no connection error was ever seen
    assert store.current_profile() == PROFILE and primary.current_profile() == PROFILE
    assert store.get_json("job:1") == {"state": "queued"}
    assert primary.get_json("job:1") == {"state": "queued"}


def test_an_outage_during_replay_resumes_without_duplicating_writes(setup):
    primary, store, clock = setup
    store.incr("stats", "n")
    primary.down = True
    for _ in range(3):
        store.incr("stats", "n")
    primary.down = False
    primary.fail_after = 2  # the loss check and the first replayed write land, the second fails
    clock.now += 1.0
    store.get_json("x")
    assert store.pending() == 2 and primary.counters("stats") == {"n": 2.0}
    clock.now += 1.0
    store.get_json("x")
    assert store.pending() == 0 and primary.counters("stats") == {"n": 4.0}


def test_increments_to_a_group_redis_lost_are_not_counted_twice(setup):
    primary, store, clock = setup
    store.incr("stats", "n", 5)
    primary.down = True
    store.incr("stats", "n", 3)
    primary.restart()  # back empty: the group is restored whole, the journaled 3 not replayed
    clock.now += 1.0
    store.get_json("x")
    assert primary.counters("stats") == {"n": 8.0} and store.pending() == 0


def test_primary_extras_pass_through(setup):
    _, store, _ = setup
    assert store.url == "redis://fake:6379/0" and store.profile_versions() == ["v1"]


def test_routing_keeps_the_measured_profile_while_redis_is_down(setup, keyword_encoder):
    from experts.registry import parse_registry
    from router import Router
    from router.classify import CentroidHead, EmbeddingSkillClassifier

    primary, store, _ = setup
    registry = parse_registry({"skills": ["law", "math"], "experts": [
        {"name": "a", "model": "m"}, {"name": "b", "model": "m"}]})  # fmt: skip
    head = CentroidHead(["law", "math"], keyword_encoder.encode(["judge", "equation"]), 0.05)
    router = Router(EmbeddingSkillClassifier(keyword_encoder, head), registry, store)
    store.publish_profile(PROFILE)
    assert router.route("solve the equation", "auto").recruitment["competence_source"] == "profile:v1"
    primary.down = True
    decision = router.route("solve the equation", "auto")
    assert decision.recruitment["competence_source"] == "profile:v1"
    assert decision.experts == ["a"]
