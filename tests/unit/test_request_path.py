"""The request path is short and named after the stages, measured rather than described.

One routed chat request goes through the real HTTP API, the real pipeline, router and dispatch,
and the real handle client into `experts.hosted.HostedExpert` (with an in-process stand-in for
Ray's handle and an engine that answers at once). Where it passes through is read off the call
stack at the three places work is done: the encoder (classify), the competence lookup (recruit)
and the engine call. The union of those stacks is the path.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator

import httpx

from experts.clients import HandleExpertClient
from experts.hosted import HostedExpert
from experts.registry import Expert, parse_registry
from experts.stream import Delta, ExpertRequest
from router import CentroidHead, EmbeddingSkillClassifier, Router
from serving.ingress import create_api
from serving.pipeline import Pipeline
from tests.conftest import KeywordEncoder

PACKAGES = ("experts", "router", "skills", "serving")
REGISTRY = parse_registry({
    "skills": ["law", "math"],
    "experts": [{"name": "solo", "model": "m", "skills": {"math": 0.9, "law": 0.2}},
                {"name": "other", "model": "m2", "skills": {"math": 0.1, "law": 0.9}}],
})  # fmt: skip
STACKS: dict[str, list[str]] = {}


def _project_stack() -> list[str]:
    """Project modules on the call stack, outermost first, each once."""
    seen: list[str] = []
    for info in reversed(inspect.stack()):
        module = info.frame.f_globals.get("__name__", "")
        if module.split(".")[0] in PACKAGES and module not in seen:
            seen.append(module)
    return seen


class RecordingEncoder(KeywordEncoder):
    def encode(self, texts, batch_size=64):
        STACKS["classify"] = _project_stack()
        return super().encode(texts, batch_size)


class RecordingProfiles:
    """The recruiter's `CompetenceSource`: no profile yet (the registry's priors apply)."""

    def current_profile(self) -> dict | None:
        STACKS["recruit"] = _project_stack()
        return None


class Engine:
    async def stream_request(self, request: ExpertRequest) -> AsyncIterator[Delta]:
        STACKS["engine"] = _project_stack()
        yield Delta("x = 2", "stop", 5, 3)


class InProcessHandle:
    """Stands in for Ray Serve's handle: `.options(stream=True).stream_chat.remote(request)`."""

    def __init__(self, target: HostedExpert) -> None:
        self.stream_chat = self
        self._target = target

    def options(self, **_: object) -> InProcessHandle:
        return self

    def remote(self, request: ExpertRequest) -> AsyncIterator[Delta]:
        return self._target.stream_chat(request)


async def test_a_routed_request_passes_through_eight_stage_modules_each_once():
    hosted = HostedExpert.__new__(HostedExpert)  # its constructor would load a vLLM engine
    hosted.expert, hosted.engine = Expert(name="solo", model="m"), Engine()
    encoder = RecordingEncoder()
    head = CentroidHead(["law", "math"], encoder.encode(["contract court", "solve x"]), 0.05)
    router = Router(EmbeddingSkillClassifier(encoder, head), REGISTRY, RecordingProfiles())

    async def route(text: str, model: str):
        return router.route(text, model)

    clients = {name: HandleExpertClient(name, InProcessHandle(hosted)) for name in ("solo", "other")}
    app = create_api(Pipeline(REGISTRY, route, clients))
    STACKS.clear()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as http:
        r = await http.post("/v1/chat/completions", json={
            "model": "auto", "messages": [{"role": "user", "content": "solve 3x = 6 for x"}]})  # fmt: skip
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "x = 2"

    path = [m for stage in ("classify", "recruit", "engine") for m in STACKS[stage]]
    path = list(dict.fromkeys(path))  # union, in order of first appearance
    assert path == [
        "serving.ingress", "serving.pipeline", "router.router", "router.classify",
        "router.recruit", "serving.dispatch", "experts.clients", "experts.hosted",
    ], path  # fmt: skip
    # Each stage's stack nests inside the pipeline: entered from the handler, never re-entered.
    for stack in STACKS.values():
        assert stack[:2] == ["serving.ingress", "serving.pipeline"], stack
    assert r.json()["quorum"]["routing"]["experts"] == ["solo"]
