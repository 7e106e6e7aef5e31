"""The Ray Serve application: ingress → router → one deployment per hosted (vLLM) expert.

`build_app(args)` is what Serve configs name (`import_path: serving.app:build_app`); `quorum serve`
calls it too. Why not `ray.serve.llm`: it was evaluated (it serves vLLM CPU engines here when its
ingress is given spare logical CPUs), but Quorum's ingress must decide per request which engine
answers, attach the routing decision, and (next) queue requests per expert, batch them and put
engines to sleep and wake them — so each expert runs in a small deployment of ours around vLLM's
`AsyncLLM` (`experts.engine.VLLMEngine`), with a plain-data streaming interface between them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from experts._paths import quorum_home
from experts.engine import Delta
from experts.errors import ContextLengthExceededError, ExpertError, QuorumError
from experts.registry import Expert, Registry, load_registry, parse_registry
from router import EmbeddingSkillClassifier, Router, RoutingDecision, load_head
from serving.audit import AuditObserver, make_audit_log
from serving.auth import build_authenticator, load_keys
from serving.batches import install_batches
from serving.engines import ExpertClient, ExpertRequest, HandleExpertClient, OpenAIHTTPExpertClient
from serving.ingress import ChatService, create_api
from serving.metrics import FanOutObserver, RayMetricsObserver
from serving.residency import expert_pool_deployment
from serving.schedule import PoolExpertClient
from skills.store import InMemoryStateStore, StateStore

log = logging.getLogger(__name__)

_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def make_store(redis_url: str | None = None) -> StateStore:
    """The state store: Redis when configured (`QUORUM_REDIS_URL`), else in process.

    Redis is wrapped in `ResilientStateStore`: while it is unreachable the router serves from
    process memory and journals writes, and replays them when Redis returns."""
    url = redis_url or os.environ.get("QUORUM_REDIS_URL")
    if url:
        from skills.redis_store import RedisStateStore, StateStoreUnavailableError
        from skills.resilient_store import ResilientStateStore

        redis_store = RedisStateStore.from_url(url, check=False)
        try:
            redis_store.ping()
        except StateStoreUnavailableError as exc:
            log.warning("%s; starting anyway, with state in process until it answers", exc.message)
        return ResilientStateStore(redis_store)
    return InMemoryStateStore()


def build_router(registry: Registry, store: StateStore) -> Router:
    """The production router: MiniLM embeddings + the registry's trained head."""
    from router._embed import MiniLMEncoder

    config = registry.router.classifier
    head = load_head(config.artifact, config.kind)
    return Router(EmbeddingSkillClassifier(MiniLMEncoder(), head), registry, store)


@serve.deployment(ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": _OFFLINE_ENV}})
class RouterServer:
    """Classifies and recruits. Concurrent requests are classified together in one encoder batch."""

    def __init__(self, registry: dict[str, Any], redis_url: str | None = None) -> None:
        self.registry = parse_registry(registry)
        self.router = build_router(self.registry, make_store(redis_url))

    async def route(self, text: str, model: str) -> RoutingDecision:
        self.router.recruiter.candidates(model)  # an unknown model fails alone, not its batch
        return await self._route_batch(text, model)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _route_batch(self, texts: list[str], models: list[str]) -> list[RoutingDecision]:
        # The encoder is CPU-bound; keep the replica's event loop free while it runs.
        return await asyncio.to_thread(self.router.route_batch, texts, models)


@serve.deployment
class VLLMExpertServer:
    """One hosted expert: a vLLM engine, streaming `Delta`s to the ingress."""

    def __init__(self, expert: dict[str, Any]) -> None:
        from experts.engine import VLLMEngine
        from experts.models import resolve_model

        self.expert = Expert.model_validate(expert)
        self.engine = VLLMEngine(
            resolve_model(self.expert.model),
            max_model_len=self.expert.context_length,
            engine_kwargs=self.expert.engine_args,
        )

    async def stream_chat(self, request: ExpertRequest) -> AsyncIterator[Delta]:
        from experts.engine import ContextLengthError

        try:
            async for delta in self.engine.stream_chat(
                request.messages,
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                top_p=request.top_p,
                stop=request.stop,
                seed=request.seed,
                request_id=request.request_id,
            ):
                yield delta
        except ContextLengthError as exc:
            raise ContextLengthExceededError(
                f"expert '{self.expert.name}': {exc}", param="messages"
            ) from None
        except QuorumError:
            raise
        except Exception as exc:
            log.exception("expert %s failed on %s", self.expert.name, request.request_id)
            raise ExpertError(f"expert '{self.expert.name}' failed: {type(exc).__name__}") from None


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress()
class QuorumIngress:
    """The OpenAI HTTP API. Builds its `ChatService` from handles; FastAPI app built on the replica."""

    def __init__(
        self,
        registry: dict[str, Any],
        router,
        experts: dict[str, Any],
        redis_url: str | None = None,
        auth_keys: list[dict[str, Any]] | None = None,
    ) -> None:
        self.registry = parse_registry(registry)
        # Hashed keys only (loaded by build_app); counters in Redis when it is configured.
        self.auth = build_authenticator(
            auth_keys or [], redis_url or os.environ.get("QUORUM_REDIS_URL")
        )
        clients: dict[str, ExpertClient] = {}
        self.scheduler = None  # the expert pool's snapshot, with residency
        for expert in self.registry.experts:
            if expert.backend == "vllm" and self.registry.residency is not None:
                clients[expert.name] = PoolExpertClient(expert.name, experts[expert.name])
                self.scheduler = experts[expert.name].snapshot.remote
            elif expert.backend == "vllm":
                clients[expert.name] = HandleExpertClient(expert.name, experts[expert.name])
            else:
                clients[expert.name] = OpenAIHTTPExpertClient(expert)

        async def route(text: str, model: str) -> RoutingDecision:
            return await router.route.remote(text, model)

        # Metrics go to Ray's metrics API (dashboard + Prometheus); decisions to the routing audit.
        self.audit = make_audit_log(redis_url)
        observer = FanOutObserver(
            [RayMetricsObserver(self.registry), AuditObserver(self.audit, self.registry)]
        )
        self.service = ChatService(self.registry, route, clients, observer)

    def __serve_build_asgi_app__(self):
        api = create_api(self.service, self.audit, auth=self.auth, scheduler=self.scheduler)
        install_batches(api, self.service, quorum_home() / "batches")  # /v1/files, /v1/batches
        return api


def expert_deployment(expert: Expert):
    """The Serve deployment of one hosted expert, with the resources the registry gives it."""
    actor_options: dict[str, Any] = {
        "num_cpus": expert.resources.cpus,
        "num_gpus": expert.resources.gpus,
        "runtime_env": {"env_vars": {**_OFFLINE_ENV, **expert.env}},
    }
    if expert.resources.memory_gb:
        actor_options["memory"] = int(expert.resources.memory_gb * 2**30)
    return VLLMExpertServer.options(
        name=f"expert-{expert.name}",
        num_replicas=expert.replicas,
        ray_actor_options=actor_options,
        max_ongoing_requests=256,
        health_check_timeout_s=60,
    )


def build_app(args: dict[str, Any] | None = None):
    """Serve application builder. `args`: `registry` (YAML path; default: embedded), `redis_url`."""
    args = args or {}
    registry = load_registry(args.get("registry"))
    data = registry.model_dump(mode="json")
    experts = {e.name: expert_deployment(e).bind(e.model_dump(mode="json"))
               for e in registry.experts if e.backend == "vllm"}  # fmt: skip
    if registry.residency is not None:  # S slots shared by all hosted experts, batch by expert
        pool = expert_pool_deployment(registry).bind(data)
        experts = {name: pool for name in experts}
    router = RouterServer.bind(data, args.get("redis_url"))
    keys = [k.to_dict() for k in load_keys(registry.auth)]  # a bad key file fails here, at start
    if keys:
        log.info("access control on: %d API key(s)", len(keys))
    return QuorumIngress.bind(data, router, experts, args.get("redis_url"), keys)
