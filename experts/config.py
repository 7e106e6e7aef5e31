"""The registry's service-wide sections: `router` (classifier, limits, faults), `auth` and
`residency`. Each is a pydantic model with its defaults and documentation; the services read
these models directly (the scheduler's settings are `Residency` itself), so a setting has one
definition and one default.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["Aggregation", "AuthConfig", "ClassifierConfig", "FaultConfig", "FeedbackConfig",
           "PolicyConfig", "ReadinessConfig", "Residency", "RouterConfig", "Strict"]  # fmt: skip


class Strict(BaseModel):
    """Unknown fields are errors (a typo must not be ignored); values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


Aggregation = Literal["synthesis", "vote", "confidence"]


class ClassifierConfig(Strict):
    kind: str = Field("logreg", description="Head kind: one of router.classify.HEADS.")
    encoder: str = Field(
        "static",
        pattern=r"^(static|minilm(:[0-9]+)?)$",
        description="Text → vector: `static` (the default: MiniLM distilled into a token table, "
        "~0.1-1.4 ms a query on a CPU core, skill accuracy 0.776 on MMLU-Pro's held-out fifth: "
        "router/static_encoder.py; `quorum serve` builds the table once) or `minilm` / "
        "`minilm:<max tokens>` (all-MiniLM-L6-v2: accuracy 0.789, 21-106 ms a query). The head "
        "and any fitted routing policy must be trained on the same encoder; `builtin` heads "
        "exist for both.",
    )
    artifact: str = Field(
        "builtin",
        description="Path of the trained head (JSON written by `python -m router.train`), or "
        "`builtin` for the head shipped with Quorum (trained on MMLU-Pro's 14 categories).",
    )


class PolicyConfig(Strict):
    artifact: str = Field(
        description="Path of a fitted routing policy (`.npz` written by `quorum fit-policy`)."
    )
    kind: str | None = Field(
        None, description="Expected policy kind (knn, predictor, ...); checked against the file."
    )


class FeedbackConfig(Strict):
    enabled: bool = Field(
        True, description="Keep what `POST /v1/feedback` needs for each routed answer."
    )
    window_s: float = Field(
        86400.0,
        gt=0,
        description="How long after an answer feedback on it is accepted (its expert and the "
        "request's embedding are kept that long; never the prompt text).",
    )


class FaultConfig(Strict):
    retries: int = Field(
        1,
        ge=0,
        le=5,
        description="Extra attempts on the same expert (another replica) before "
        "falling back; only failures before the first token are retried.",
    )
    fallback: bool = Field(
        True,
        description="After the retries, try the next-best expert for the request's skills "
        "(requests that name an expert directly never change expert).",
    )
    max_fallbacks: int = Field(2, ge=0, description="Most other experts tried for one request.")
    breaker_failures: int = Field(
        3, ge=1, description="Consecutive failures that open an expert's circuit breaker."
    )
    breaker_cooldown_s: float = Field(
        30.0, gt=0, description="How long an open breaker keeps traffic away before one probe."
    )


class AuthConfig(Strict):
    keys_file: str | None = Field(
        None,
        description="YAML/JSON file of API keys (see README, Access control). Auth is on when "
        "this, $QUORUM_API_KEYS_FILE or $QUORUM_API_KEYS names at least one key; off otherwise.",
    )
    requests_per_minute: int | None = Field(
        600,
        ge=1,
        description="Default per-key request rate; a key may set its own. None: no limit.",
    )
    tokens_per_day: int | None = Field(
        None, ge=1, description="Default per-key token budget per UTC day (prompt + completion)."
    )


class ReadinessConfig(Strict):
    min_ready: int | None = Field(
        None,
        ge=1,
        description="`/readyz` answers 200 once this many experts are ready; None: every expert.",
    )
    wait_s: float = Field(
        30.0,
        ge=0,
        description="How long a request whose expert is still loading waits for it; after that "
        "it gets a 503 with `Retry-After` (never an unbounded wait).",
    )
    retry_after_s: int = Field(
        10, ge=1, description="`Retry-After` seconds on that 503 and on a not-ready `/readyz`."
    )
    poll_s: float = Field(
        2.0, gt=0, description="How often the ingress asks Ray Serve for the experts' states."
    )


class RouterConfig(Strict):
    classifier: ClassifierConfig = Field(
        default_factory=ClassifierConfig, description="The skill classifier's trained head."
    )
    cost_weight: float = Field(
        0.1,
        ge=0,
        description="λ: quality points the most expensive expert must buy back over the cheapest.",
    )
    target_cost: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Instead of λ: the average cost to aim for, as a fraction of the most "
        "expensive candidate expert's; a fitted policy's calibration turns it into λ (without "
        "one, cost_weight is used and the decision says so).",
    )
    policy: PolicyConfig | None = Field(
        None,
        description="A fitted routing policy to route with; None: measured profile competence "
        "or the registry's priors. A policy published to the state store replaces it live.",
    )
    feedback: FeedbackConfig = Field(
        default_factory=FeedbackConfig, description="`POST /v1/feedback` on routed answers."
    )
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body accepted.")
    max_messages: int = Field(256, ge=1, description="Most messages in one request.")
    default_max_tokens: int = Field(256, ge=1, description="`max_tokens` when a request omits it.")
    experts_per_query: int = Field(
        1,
        ge=1,
        le=16,
        description="k: experts that answer each routed query (fixed k; see adaptive_confidence).",
    )
    adaptive_confidence: float | None = Field(
        None,
        gt=0,
        le=1,
        description="p: adaptive k. Experts are added, best first, until their cumulative routing "
        "probability reaches p (one expert when the router is confident), at most max_experts. "
        "Set it to use adaptive k instead of the fixed experts_per_query.",
    )
    max_experts: int = Field(3, ge=1, le=16, description="Cap on adaptive k.")
    aggregation: Aggregation = Field(
        "synthesis",
        description="How k > 1 answers become one: `synthesis` (an aggregator expert chosen per "
        "skill by measured ability writes it), `vote` (majority over extracted answers), "
        "`confidence` (the expert the router rates highest).",
    )
    max_tokens_cap: int = Field(
        4096, ge=1, description="Largest `max_tokens` a request may ask for (400 above it)."
    )
    max_choices: int = Field(
        8, ge=1, le=128,
        description="Most choices (`n`) one chat request may ask for (400 above it); each is "
        "one more generation, on the same experts.",
    )
    max_message_chars: int = Field(
        200_000, ge=1, description="Longest text of one message, in characters (400 above it)."
    )
    route_timeout_s: float = Field(
        30.0, gt=0, description="Time limit for classify + recruit of one request (504 after it)."
    )
    first_token_timeout_s: float | None = Field(
        30.0,
        gt=0,
        description="Time limit for an expert's first token, per attempt; a late expert counts as "
        "failed and the next one is tried (an expert with no live replica queues requests rather "
        "than refusing them, so this is what notices it). None: the expert's own `timeout_s`. "
        "With `residency`, a hosted expert's first-token and answer limits also allow "
        "`max_wait_s` + 2 x `swap_cost_s` of queueing.",
    )
    faults: FaultConfig = Field(
        default_factory=FaultConfig,
        description="Retries, fallback and circuit breaking.",
    )
    readiness: ReadinessConfig = Field(
        default_factory=ReadinessConfig,
        description="Readiness probe and how long requests wait for a loading expert.",
    )


class Residency(Strict):
    """Expert residency: `slots` engines fit on the device pool at once; the scheduler
    (serving/schedule.py) queues requests per expert, batches them and swaps experts in and out."""

    slots: int = Field(1, ge=1, le=1024, description="Expert engines loaded at once.")
    policy: Literal["batch", "fifo"] = Field(
        "batch",
        description="`batch`: batch by expert, keep loaded experts while they have work (default);"
        " `fifo`: arrival order, one request per dispatch (the baseline).",
    )
    max_batch_size: int = Field(16, ge=1, le=4096, description="Most requests in one batch.")
    max_batch_wait_s: float = Field(
        0.05, ge=0, description="How long a partial batch waits for more requests."
    )
    max_wait_s: float = Field(
        300.0,
        gt=0,
        description="A request queued this long makes its expert urgent: it takes the next slot "
        "that comes free at a batch boundary (bounds every request's wait).",
    )
    swap_cost_s: float = Field(
        40.0,
        gt=0,
        description="Expected evict + load time, s (measured on vLLM CPU: shutdown + start; "
        "benchmarks/RESULTS.md). The policy weighs work against it.",
    )
    min_residency_factor: float = Field(
        1.0, ge=0, description="A loaded expert with work keeps its slot >= this x swap_cost_s."
    )
    max_inflight_batches: int = Field(
        1, ge=1, description="Batches of one expert running at once on its engine."
    )
    max_sleeping: int = Field(
        0,
        ge=0,
        description="Evicted engines kept asleep in host memory (vLLM sleep mode; only where the "
        "platform has it, not on CPU); beyond it engines are shut down.",
    )

    @model_validator(mode="after")
    def _check(self) -> Residency:
        if self.max_wait_s <= self.max_batch_wait_s:
            raise ValueError(
                f"max_wait_s ({self.max_wait_s}) must exceed max_batch_wait_s "
                f"({self.max_batch_wait_s}); raise max_wait_s"
            )
        return self
