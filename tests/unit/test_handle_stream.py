"""Streaming from a Ray Serve handle: early exit cancels the replica call; errors come unwrapped."""

from __future__ import annotations

import pytest

from experts.clients import stream_from_handle
from experts.errors import ContextLengthExceededError, ExpertUnavailableError
from experts.stream import Delta


class Response:
    """The `DeploymentResponseGenerator` protocol in memory: async iteration plus `cancel()`."""

    def __init__(self, deltas: list[Delta], error: Exception | None = None) -> None:
        self.deltas, self.error, self.cancelled = list(deltas), error, False

    def __aiter__(self):
        return self

    async def __anext__(self) -> Delta:
        if self.deltas:
            return self.deltas.pop(0)
        if self.error is not None:
            raise self.error
        raise StopAsyncIteration

    def cancel(self) -> None:
        self.cancelled = True


class RemoteError(RuntimeError):
    """Like Ray's RayTaskError: the replica's exception travels as `cause`."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(f"remote: {cause}")
        self.cause = cause


DELTAS = [Delta("a", None, 3, 1), Delta("b", None, 3, 2), Delta("", "stop", 3, 2)]


async def test_a_consumer_that_stops_early_cancels_the_replica_call() -> None:
    response = Response(DELTAS)
    stream = stream_from_handle("smol", response)
    assert (await anext(stream)).text == "a"
    await stream.aclose()  # the client went away, or its batch was cancelled
    assert response.cancelled


async def test_a_finished_stream_is_not_cancelled() -> None:
    response = Response(DELTAS)
    assert [d.text async for d in stream_from_handle("smol", response)] == ["a", "b", ""]
    assert not response.cancelled


async def test_a_typed_error_from_the_replica_is_raised_unwrapped() -> None:
    error = ContextLengthExceededError("prompt too long", param="messages")
    with pytest.raises(ContextLengthExceededError, match="prompt too long"):
        [d async for d in stream_from_handle("smol", Response([], RemoteError(error)))]


async def test_any_other_failure_names_the_expert() -> None:
    response = Response(DELTAS[:1], RuntimeError("actor died"))
    with pytest.raises(ExpertUnavailableError, match="expert 'smol' failed: RuntimeError"):
        [d async for d in stream_from_handle("smol", response)]
    assert not response.cancelled
