"""The Ray Serve application: the wiring, and nothing else.

    HTTP → QuorumIngress (create_api over the Pipeline; classify + recruit in this process)
             → one deployment per hosted expert (experts.hosted.HostedExpert: a vLLM engine)
             | the expert pool (serving.schedule.ExpertPool), with `residency`
             | `openai`-backend experts, called directly over HTTP

`build_app(args)` is what Serve configs name (`import_path: serving.deployments:build_app`);
`quorum serve` calls it too. The stages are plain Python classes defined elsewhere; this module
makes them deployments, chooses their resources and connects them with handles.

Why not `ray.serve.llm`: it was evaluated (it serves vLLM CPU engines here when its ingress is
given spare logical CPUs), but Quorum's ingress must decide per request which engine answers,
attach the routing decision, and queue requests per expert, batch them and swap engines, so each
expert runs in a small deployment of ours around vLLM's `AsyncLLM`.

Routing runs in the ingress process (`router.RouteBatcher`: concurrent requests share one encoder
batch), so a routed request makes one Ray hop, to its expert.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from ray import serve

from experts.clients import REMOTE_BACKENDS, ExpertClient, HandleExpertClient, PoolExpertClient
from experts.hosted import HostedExpert
from experts.paths import OFFLINE_ENV, quorum_home
from experts.registry import Expert, Registry, load_registry, parse_registry
from experts.tokens import TemplateTokenCounter
from router import EmbeddingSkillClassifier, RouteBatcher, Router, load_head
from router.encoders import encoder_name, make_encoder
from router.live_policy import load_served_policy
from serving.audit import AuditObserver, make_audit_log
from serving.auth import build_authenticator, load_keys
from serving.batches import install_batches
from serving.feedback import FeedbackObserver, install_feedback
from serving.ingress import create_api
from serving.metrics import RayMetricsObserver
from serving.observe import FanOutObserver
from serving.pipeline import Pipeline
from serving.readiness import Readiness, start_serve_poller
from serving.schedule import ExpertPool
from serving.serve_options import ingress_options
from skills.policy_store import StorePolicySource
from skills.store import InMemoryStateStore, StateStore

__all__ = ["QuorumIngress", "build_app", "build_router", "make_store"]

log = logging.getLogger(__name__)


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
    """The production router: the registry's encoder (`static` by default) + its trained head. Expected quality
    comes from the routing policy published to `store` (hot-reloaded), else the registry's
    `router.policy`, else `store`'s current profile, else the registry's priors."""
    config = registry.router.classifier
    head = load_head(config.artifact, config.kind, config.encoder)
    encoder = make_encoder(config.encoder)
    trained_on = getattr(head, "meta", {}).get("encoder")
    if trained_on and trained_on != encoder.name:
        raise ValueError(f"the skill head {config.artifact!r} was trained on encoder {trained_on!r}, "
                         f"the registry's router.classifier.encoder is {encoder.name!r}")  # fmt: skip
    classifier = EmbeddingSkillClassifier(encoder, head)
    encoder = classifier.encoder_name
    policies = StorePolicySource(store, registry, encoder, load_served_policy(registry, encoder))
    return Router(classifier, registry, store, policies)


@serve.deployment(**ingress_options(OFFLINE_ENV))  # serving/serve_options.py: why each
@serve.ingress()
class QuorumIngress:
    """The OpenAI HTTP API over the pipeline; the FastAPI app is built on the replica."""

    def __init__(
        self,
        registry: dict[str, Any],
        experts: dict[str, Any],
        redis_url: str | None = None,
        auth_keys: list[dict[str, Any]] | None = None,
    ) -> None:
        self.registry = parse_registry(registry)
        redis_url = redis_url or os.environ.get("QUORUM_REDIS_URL")
        # Hashed keys only (loaded by build_app); counters in Redis when it is configured.
        self.auth = build_authenticator(auth_keys or [], redis_url)
        clients: dict[str, ExpertClient] = {}
        self.scheduler = None  # the expert pool's snapshot, with residency
        for expert in self.registry.experts:
            if expert.backend == "vllm" and self.registry.residency is not None:
                clients[expert.name] = PoolExpertClient(expert.name, experts[expert.name])
                self.scheduler = experts[expert.name].snapshot.remote
            elif expert.backend == "vllm":
                clients[expert.name] = HandleExpertClient(expert.name, experts[expert.name])
            else:  # served elsewhere: called directly from this process
                clients[expert.name] = REMOTE_BACKENDS[expert.backend](expert)
        store = make_store(redis_url)
        router = build_router(self.registry, store)
        # Metrics go to Ray's metrics API (dashboard + Prometheus); decisions to the routing audit;
        # what feedback needs, to the state store.
        self.audit = make_audit_log(redis_url)
        self.feedback = FeedbackObserver(store, self.registry, router.classifier.encoder_name)
        observer = FanOutObserver([RayMetricsObserver(self.registry),
                                   AuditObserver(self.audit, self.registry), self.feedback])  # fmt: skip
        # A static encoder routes on the event loop; a transformer in a worker thread.
        inline = self.registry.router.classifier.encoder == "static"
        batcher = RouteBatcher(router, in_thread=not inline)
        # Prompt length in each hosted expert's tokens, so recruitment skips experts it outgrows.
        counter = TemplateTokenCounter(self.registry)
        threading.Thread(target=counter.warm, name="load-tokenizers", daemon=True).start()
        # Each expert loading / ready / failed, from Serve's deployment states (/readyz, waits).
        readiness = Readiness(self.registry)
        start_serve_poller(self.registry, readiness)
        self.pipeline = Pipeline(self.registry, batcher.route, clients, observer, counter=counter,
                                 readiness=readiness)  # fmt: skip

    def __serve_build_asgi_app__(self):
        api = create_api(self.pipeline, self.audit, auth=self.auth, scheduler=self.scheduler)
        install_batches(api, self.pipeline, quorum_home() / "batches")  # /v1/files, /v1/batches
        install_feedback(api, self.feedback, self.registry.router.max_body_bytes)
        return api


def expert_deployment(expert: Expert):
    """The Serve deployment of one hosted expert, with the resources the registry gives it."""
    actor_options: dict[str, Any] = {
        "num_cpus": expert.resources.cpus,
        "num_gpus": expert.resources.gpus,
        "runtime_env": {"env_vars": {**OFFLINE_ENV, **expert.env}},
    }
    if expert.resources.memory_gb:
        actor_options["memory"] = int(expert.resources.memory_gb * 2**30)
    if expert.resources.custom:  # placement: only nodes declaring these resources host it
        actor_options["resources"] = dict(expert.resources.custom)
    return serve.deployment(HostedExpert).options(
        name=f"expert-{expert.name}",
        num_replicas=expert.replicas,
        ray_actor_options=actor_options,
        max_ongoing_requests=256,
        health_check_timeout_s=60,
    )


def expert_pool_deployment(registry: Registry):
    """The deployment hosting every vllm expert in `residency.slots` slots behind the scheduler:
    one replica owns the device pool; its resources are `slots` x the largest expert's."""
    hosted = [e for e in registry.experts if e.backend == "vllm"]
    env = dict(OFFLINE_ENV)
    for e in hosted:
        env |= e.env
    slots = registry.residency.slots
    actor_options: dict[str, Any] = {
        "num_cpus": slots * max(e.resources.cpus for e in hosted),
        "num_gpus": slots * max(e.resources.gpus for e in hosted),
        "runtime_env": {"env_vars": env},
    }
    custom: dict[str, float] = {}  # the pool runs every hosted expert: a node fit for each
    for e in hosted:
        custom |= {k: max(v, custom.get(k, 0.0)) for k, v in e.resources.custom.items()}
    if custom:
        actor_options["resources"] = custom
    return serve.deployment(ExpertPool).options(
        name="expert-pool", num_replicas=1, max_ongoing_requests=4096, health_check_timeout_s=120,
        ray_actor_options=actor_options,
    )  # fmt: skip


def build_app(args: dict[str, Any] | None = None):
    """Serve application builder. `args`: `registry` (YAML path; default: embedded), `redis_url`."""
    args = args or {}
    registry = load_registry(args.get("registry"))
    # A registry policy that does not fit (file, experts, encoder) fails here, before deploying.
    load_served_policy(registry, encoder_name(registry.router.classifier.encoder))
    data = registry.model_dump(mode="json")
    experts = {e.name: expert_deployment(e).bind(e.model_dump(mode="json"))
               for e in registry.experts if e.backend == "vllm"}  # fmt: skip
    if registry.residency is not None:  # S slots shared by all hosted experts, batch by expert
        pool = expert_pool_deployment(registry).bind(data)
        experts = {name: pool for name in experts}
    keys = [k.to_dict() for k in load_keys(registry.auth)]  # a bad key file fails here, at start
    if keys:
        log.info("access control on: %d API key(s)", len(keys))
    return QuorumIngress.bind(data, experts, args.get("redis_url"), keys)
