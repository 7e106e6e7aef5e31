"""The expert registry: which experts exist, where and how they run, what they cost, what they know.

YAML is only the serialised form; the schema is these pydantic models. Load with
`load_registry(path)`; every problem is reported as a `RegistryError` naming the file, the field
and the fix, before anything starts. The experts and virtual models are here; the service-wide
sections (`router`, `auth`, `residency`) are in `experts/config.py`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from experts.capabilities import Capabilities
from experts.config import (
    Aggregation,
    AuthConfig,
    ClassifierConfig,
    FaultConfig,
    Residency,
    RouterConfig,
    Strict,
)
from experts.errors import ModelNotFoundError, RegistryError

__all__ = ["MMLU_PRO_SKILLS", "AuthConfig", "Capabilities", "ClassifierConfig", "Cost", "Expert",
           "FaultConfig", "Registry", "Residency", "Resources", "RouterConfig", "VirtualModel", "load_registry",
           "parse_registry"]  # fmt: skip

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
Name = Annotated[str, Field(pattern=_NAME)]

MMLU_PRO_SKILLS = [
    "biology", "business", "chemistry", "computer science", "economics", "engineering", "health",
    "history", "law", "math", "other", "philosophy", "physics", "psychology",
]  # fmt: skip


class Resources(Strict):
    cpus: float = Field(1.0, ge=0, description="CPU cores reserved per replica (Ray `num_cpus`).")
    gpus: float = Field(
        0.0, ge=0, description="GPUs per replica (Ray `num_gpus`); 0 on CPU builds."
    )
    memory_gb: float | None = Field(
        None, gt=0, description="Host memory to reserve per replica, GiB (Ray `memory`)."
    )
    custom: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict,
        description="Custom Ray resources per replica (Ray `resources`): places the replicas on "
        "nodes that declare them, e.g. {node_b: 1} with `ray start --resources '{\"node_b\": 4}'`.",
    )

    @model_validator(mode="after")
    def _check_custom(self) -> Resources:
        builtin = sorted(set(self.custom) & {"CPU", "GPU", "memory", "object_store_memory"})
        if builtin:
            raise ValueError(
                f"custom resource {builtin[0]!r} is Ray's own: use cpus/gpus/memory_gb"
            )
        return self


class Cost(Strict):
    input_per_1m: float = Field(0.0, ge=0, description="Price of 1M prompt tokens (any currency).")
    output_per_1m: float = Field(0.0, ge=0, description="Price of 1M generated tokens.")

    @property
    def blended(self) -> float:
        """One number for recruitment: a 1:1 mix of input and output prices."""
        return (self.input_per_1m + self.output_per_1m) / 2


class Expert(Strict):
    name: Name = Field(description="What clients pass as `model` to reach this expert directly.")
    model: str = Field(
        description="HF folder or id the engine loads (`builtin:<name>` for a bundled tiny model); "
        "for `backend: openai`, the model name the remote server expects."
    )
    backend: Literal["vllm", "openai"] = Field(
        "vllm",
        description="`vllm`: an engine Quorum hosts on Ray Serve. `openai`: an already-running "
        "OpenAI-compatible server (e.g. a vLLM server elsewhere) called over HTTP.",
    )
    base_url: str | None = Field(
        None, description="For `backend: openai`: the server's base URL, e.g. http://host:8000/v1."
    )
    api_key_env: str | None = Field(
        None, description="For `backend: openai`: environment variable holding the API key."
    )
    replicas: int = Field(1, ge=1, le=64, description="Engine replicas (vllm backend).")
    resources: Resources = Field(default_factory=Resources, description="Per replica.")
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra vLLM `AsyncEngineArgs` fields, e.g. {enforce_eager: true, dtype: bfloat16}.",
    )
    context_length: int = Field(
        2048, ge=64, description="Max tokens of prompt + answer (vLLM `max_model_len`)."
    )
    cost: Cost = Field(default_factory=Cost, description="Serving price, per 1M tokens.")
    skills: dict[str, float] = Field(
        default_factory=dict,
        description="Prior competence per skill, P(correct) in [0, 1], used until a measured "
        "profile exists (`quorum profile`). Skills not listed get `default_competence`.",
    )
    default_competence: float = Field(
        0.5, ge=0, le=1, description="Prior competence on skills not listed under `skills`."
    )
    can_aggregate: bool = Field(
        False, description="May be chosen to synthesise several experts' answers into one."
    )
    timeout_s: float = Field(120.0, gt=0, description="Per-request time limit for this expert.")
    capabilities: Capabilities = Field(
        default_factory=Capabilities,
        description="Tool calling (and its parser), structured output, logprobs: recruitment "
        "only sends a request to experts that can serve it.",
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment of the engine's process, e.g. {VLLM_CPU_KVCACHE_SPACE: '1'}.",
    )
    moe_kernels: Literal["vllm", "quorum"] = Field(
        "vllm",
        description="MoE models (vllm backend): `quorum` runs their unquantized MoE layers on "
        "Quorum's Triton kernels (vLLM plugin `experts.moe.vllm_plugin`); unsupported layers "
        "stay on vLLM's and the log says why. On a CPU it needs env {TRITON_INTERPRET: '1'} "
        "(slow: tests only).",
    )

    @model_validator(mode="after")
    def _check(self) -> Expert:
        for skill, value in self.skills.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"skills.{skill} = {value}: competence is a probability in [0, 1]")
        if self.backend == "openai" and not self.base_url:
            raise ValueError("backend 'openai' needs base_url (e.g. http://127.0.0.1:8001/v1)")
        if self.backend == "openai" and self.moe_kernels != "vllm":
            raise ValueError("moe_kernels applies to hosted (vllm backend) experts only")
        if self.backend == "openai" and self.capabilities.tool_strict_level != "auto":
            raise ValueError("capabilities.tool_strict_level applies to hosted (vllm backend) "
                             "experts only; a remote server constrains its own tool calls")
        if self.backend == "vllm" and self.base_url:
            raise ValueError("base_url is only for backend 'openai'; remove it or change backend")
        return self


class VirtualModel(Strict):
    name: Name = Field(description="A `model` value clients may pass; routes among `experts`.")
    description: str = Field("", description="Shown in /v1/models.")
    cost_weight: float | None = Field(
        None, ge=0, description="λ for this model; default: router.cost_weight."
    )
    target_cost: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Average cost to aim for, as a fraction of the most expensive of this "
        "model's experts; calibrated into λ by the fitted policy (see router.target_cost).",
    )
    experts: list[str] | None = Field(
        None, description="Experts this model may route to; default: all."
    )
    experts_per_query: int | None = Field(
        None, ge=1, description="k for this model; default: router.experts_per_query."
    )
    adaptive_confidence: float | None = Field(
        None, gt=0, le=1, description="p for this model; default: router.adaptive_confidence."
    )
    aggregation: Aggregation | None = Field(
        None, description="How this model combines answers; default: router.aggregation."
    )


class Registry(Strict):
    skills: list[str] = Field(
        default_factory=lambda: list(MMLU_PRO_SKILLS),
        min_length=1,
        description="The skill taxonomy; the classifier head must produce exactly these.",
    )
    router: RouterConfig = Field(
        default_factory=RouterConfig, description="Routing, limits and fault handling."
    )
    auth: AuthConfig = Field(
        default_factory=AuthConfig, description="API keys, rate limits and token budgets."
    )
    virtual_models: list[VirtualModel] = Field(
        default_factory=lambda: [VirtualModel(name="auto", description="Route by skill.")],
        description="Model names that route; `auto` is always present.",
    )
    experts: list[Expert] = Field(min_length=1, description="The expert pool.")
    residency: Residency | None = Field(
        None,
        description="How many hosted (vllm) experts fit at once and how they are scheduled; "
        "None: every hosted expert gets its own always-loaded engine.",
    )

    @model_validator(mode="after")
    def _check(self) -> Registry:
        if len(set(self.skills)) != len(self.skills):
            raise ValueError("skills: each skill must appear once")
        known = ", ".join(self.skills)
        names: set[str] = set()
        for i, expert in enumerate(self.experts):
            if expert.name in names:
                raise ValueError(
                    f"experts[{i}].name: '{expert.name}' is used twice; names must be unique"
                )
            names.add(expert.name)
            for skill in expert.skills:
                if skill not in self.skills:
                    raise ValueError(
                        f"experts[{i}] ('{expert.name}') lists skill '{skill}'; known skills are: {known}"
                    )
        virtual = {v.name for v in self.virtual_models}
        for v in self.virtual_models:
            if v.name in names:
                raise ValueError(
                    f"virtual model '{v.name}' has the same name as an expert; rename one"
                )
            for e in v.experts or []:
                if e not in names:
                    raise ValueError(
                        f"virtual model '{v.name}' lists expert '{e}'; experts are: {', '.join(sorted(names))}"
                    )
            if v.cost_weight is not None and v.target_cost is not None:
                raise ValueError(
                    f"virtual model '{v.name}' sets both cost_weight and target_cost; keep one"
                )
            pool = len(v.experts or names)
            k = v.experts_per_query or self.router.experts_per_query
            if k > pool:
                raise ValueError(
                    f"virtual model '{v.name}' asks for {k} experts per query but may use only "
                    f"{pool}; lower experts_per_query or list more experts"
                )
        if "auto" not in virtual:
            object.__setattr__(
                self, "virtual_models", [VirtualModel(name="auto"), *self.virtual_models]
            )
        return self

    def expert(self, name: str) -> Expert:
        for expert in self.experts:
            if expert.name == name:
                return expert
        raise KeyError(name)

    def virtual_model(self, name: str) -> VirtualModel | None:
        return next((v for v in self.virtual_models if v.name == name), None)

    def unknown_model(self, name: str) -> ModelNotFoundError:
        """The 404 for a model that is neither a virtual model nor an expert; lists them all."""
        known = ", ".join(sorted([*(e.name for e in self.experts),
                                  *(v.name for v in self.virtual_models)]))  # fmt: skip
        return ModelNotFoundError(f"model '{name}' does not exist; available models: {known}",
                                  param="model")  # fmt: skip

    def competence_matrix(self) -> list[list[float]]:
        """Prior competence `[E, S]` from the registry (measured profiles override it)."""
        return [[e.skills.get(s, e.default_competence) for s in self.skills] for e in self.experts]


def _format_validation_error(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: invalid expert registry ({exc.error_count()} problem(s))"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling against the registry reference (README)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif err["type"] == "string_pattern_mismatch":
            msg = "names are 1-64 letters, digits, '.', '_', ':' or '-', starting with a letter or digit"
        lines.append(f"  - {loc}: {msg} (got {err.get('input')!r:.80})")
    return "\n".join(lines)


def parse_registry(data: Any, source: str = "<registry>") -> Registry:
    """Validate an already-parsed YAML document."""
    if not isinstance(data, dict):
        raise RegistryError(
            f"{source}: the registry must be a YAML mapping, got {type(data).__name__}"
        )
    try:
        return Registry.model_validate(data)
    except ValidationError as exc:
        # ValidationError does not pickle across Ray actors: re-raise as our own error.
        raise RegistryError(_format_validation_error(source, exc)) from None


def load_registry(path: str | Path | None = None) -> Registry:
    """Load and validate a registry file; `None` loads the embedded default."""
    if path is None:
        text = resources.files("experts").joinpath("default.yaml").read_text()
        source = "embedded default registry (experts/default.yaml)"
    else:
        p = Path(path)
        if not p.is_file():
            raise RegistryError(
                f"registry file not found: {p} (pass --registry PATH to a YAML file)"
            )
        text, source = p.read_text(), str(p)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise RegistryError(
            f"{source}: not valid YAML{at}: {getattr(exc, 'problem', exc)}"
        ) from None
    return parse_registry(data, source)
