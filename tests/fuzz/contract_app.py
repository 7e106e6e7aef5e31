"""The real HTTP app, in process, for contract tests: `create_api` with the batch, feedback and
compat routes, a real router (keyword encoder) and scripted experts (`FakeExpert`)."""

from __future__ import annotations

from pathlib import Path

from experts.registry import parse_registry
from router import Router
from router.classify import CentroidHead, EmbeddingSkillClassifier
from serving.auth import ApiKey, Authenticator, hash_key
from serving.batches import install_batches
from serving.feedback import FeedbackObserver, install_feedback
from serving.ingress import create_api
from serving.pipeline import Pipeline
from skills.store import InMemoryStateStore
from tests.conftest import KeywordEncoder
from tests.fakes import FakeExpert, WordCounter

ADMIN_KEY = "sk-contract-admin-0123456789"
USER_KEY = "sk-contract-user-0123456789"


def build_app(batch_root: str | Path, auth: bool = True):
    registry = parse_registry({
        "skills": ["law", "math"],
        "router": {"max_body_bytes": 20_000, "max_messages": 16, "max_message_chars": 2000},
        "experts": [{"name": "mathematician", "model": "m1", "skills": {"math": 0.9}},
                    {"name": "jurist", "model": "m2", "skills": {"law": 0.9}}],
    })  # fmt: skip
    encoder = KeywordEncoder()
    head = CentroidHead(["law", "math"], encoder.encode(["court judge", "solve equation"]), 0.05)
    store = InMemoryStateStore()
    router = Router(EmbeddingSkillClassifier(encoder, head), registry, store)

    async def route(text, model):
        return router.route(text, model)

    echo = {n: FakeExpert(n, ["{name}: ", "{question:.20}"], template=True, prompt_tokens=5,
                          completion_tokens=2) for n in ("mathematician", "jurist")}  # fmt: skip
    feedback = FeedbackObserver(store, registry, encoder.name)
    service = Pipeline(registry, route, echo, feedback, counter=WordCounter())
    keys = [ApiKey("admin", hash_key(ADMIN_KEY), admin=True), ApiKey("user", hash_key(USER_KEY))]
    api = create_api(service, auth=Authenticator(keys) if auth else None)
    install_batches(api, service, batch_root)
    install_feedback(api, feedback, registry.router.max_body_bytes)
    return api
