"""The profiling job: run every expert over a validation set, grade, and publish a versioned profile.

    python -m skills.profile --data skills/data/tiny_profile_set.jsonl [--registry FILE]
                             [--redis-url URL] [--out DIR] [--max-tokens 16]

Work is grouped by expert (batch-by-expert): one Ray actor per expert loads its vLLM engine once,
answers all of that expert's pending questions in one batch and streams each answer back as it
finishes; experts run one after another by default (`--concurrency`), which is what a 2-core
machine affords. Each graded answer is appended to `<out>/results.jsonl` the moment it arrives,
keyed by (kind, expert fingerprint, item id, item hash): a rerun of the same command skips what is
there, so an interrupted job resumes without recomputing or losing results, and an expert whose
work is all done does not even load its engine.

Competence (Symbolic-MoE's local competence, with uncertainty): per expert and skill, a Beta
posterior over P(correct). Its prior mean is the registry's prior competence for that skill and
its weight is `prior_strength` pseudo-observations (default 2), so a handful of answers moves it
only partway: α = s·m + correct, β = s·(1−m) + wrong; `competence` is the posterior mean α/(α+β),
`ci95` the central 95 % interval. `global` is the same over all items (prior mean: the expert's
mean prior over the set's skills) plus `share`, its competence normalised over the pool
(Symbolic-MoE's global competence). Items with several skills count fully for each.

Aggregator ability, measured directly as Symbolic-MoE does: each `can_aggregate` expert gets the
first `aggregate_items` questions with the other experts' answers appended, and its synthesis is
graded like any answer. The profile records its Beta posterior, the best single expert's accuracy
on the same items and the gain over it; the top-level `aggregator` is the best one.

The profile is written to `<out>/profile.json` and, when Redis is configured, published to the
state store, where running routers pick it up on their next decision (skills/redis_store.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experts.errors import QuorumError
from experts.registry import Expert, Registry
from skills.competence import compute_profile
from skills.store import StateStore
from skills.validation import ValidationItem, ValidationSet

__all__ = ["AnswerBackend", "ExpertAnswer", "ExpertSession", "ProfileConfig", "RayVLLMBackend",
           "ResultsLog", "main", "run_profile"]  # fmt: skip

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProfileConfig:
    """How the job samples and scores. Changing sampling fields starts fresh results."""

    max_tokens: int = 16
    temperature: float = 0.0  # greedy: a profile should not depend on luck
    seed: int = 0
    prior_strength: float = 2.0
    aggregate_items: int = 8  # 0: do not measure aggregators
    concurrency: int = 1  # experts running at once
    progress: bool = True


# -- answering: one session per expert ----------------------------------------------------------


@dataclass(frozen=True)
class ExpertAnswer:
    index: int  # position in the batch handed to `answer`
    text: str
    error: str | None = None  # the expert could not answer this one (it is graded wrong)


class ExpertSession(ABC):
    """One expert, loaded once, answering batches."""

    @abstractmethod
    def answer(self, conversations: list[list[dict[str, str]]]) -> Iterator[ExpertAnswer]:
        """Yield one `ExpertAnswer` per conversation, in any order, as each finishes."""

    def close(self) -> None:  # noqa: B027 (optional hook; fakes need nothing)
        """Release the expert (engine, actor)."""


class AnswerBackend(ABC):
    """Starts expert sessions: vLLM engines in Ray actors here, fakes in tests."""

    @abstractmethod
    def open(self, expert: Expert, config: ProfileConfig) -> ExpertSession: ...


def _as_completed(loop: Any, coros: list[Any]) -> Iterator[Any]:
    """Run `coros` together on `loop`, yielding each result as soon as it is ready."""
    import asyncio

    pending = {loop.create_task(c) for c in coros}
    while pending:
        done, pending = loop.run_until_complete(
            asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        )
        for task in done:
            yield task.result()


class _HTTPSession(ExpertSession):
    """An expert already served elsewhere (`backend: openai`), asked over HTTP from this process."""

    def __init__(self, expert: Expert, config: ProfileConfig, http: Any | None = None) -> None:
        import asyncio

        from serving.engines import OpenAIHTTPExpertClient

        self.loop = asyncio.new_event_loop()
        self.client = OpenAIHTTPExpertClient(expert, http)  # http: an httpx.AsyncClient (tests)
        self.config = config

    def answer(self, conversations: list[list[dict[str, str]]]) -> Iterator[ExpertAnswer]:
        from experts.errors import ExpertError
        from serving.engines import ExpertRequest, collect

        async def one(i: int, messages: list[dict[str, str]]) -> ExpertAnswer:
            request = ExpertRequest(f"profile-{i}-{time.time_ns()}", messages, self.config.max_tokens,
                                    self.config.temperature, 1.0, None, self.config.seed)  # fmt: skip
            try:
                text, _ = await collect(self.client.stream_chat(request))
            except ExpertError as exc:  # recorded with the answer and graded wrong, not dropped
                return ExpertAnswer(i, "", exc.message)
            return ExpertAnswer(i, text)

        yield from _as_completed(self.loop, [one(i, c) for i, c in enumerate(conversations)])

    def close(self) -> None:
        self.loop.close()


class _VLLMWorker:
    """Body of the Ray actor: one vLLM engine on an event loop of its own."""

    def __init__(self, expert: dict[str, Any], config: dict[str, Any]) -> None:
        import asyncio

        from experts.engine import VLLMEngine
        from experts.models import resolve_model

        self.expert = Expert.model_validate(expert)
        self.config = ProfileConfig(**config)
        # vLLM binds its output task to the loop it is created on: create it on ours.
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.engine = self.loop.run_until_complete(VLLMEngine.create(
            resolve_model(self.expert.model), max_model_len=self.expert.context_length,
            engine_kwargs=self.expert.engine_args))  # fmt: skip

    def startup_s(self) -> float:
        return self.engine.startup_s

    def answer(self, conversations: list[list[dict[str, str]]]) -> Iterator[ExpertAnswer]:

        from experts.engine import ContextLengthError

        async def one(i: int, messages: list[dict[str, str]]) -> ExpertAnswer:
            parts = []
            try:
                async for d in self.engine.stream_chat(
                    messages, max_tokens=self.config.max_tokens, temperature=self.config.temperature,
                    top_p=1.0, stop=None, seed=self.config.seed, request_id=f"profile-{i}-{time.time_ns()}",
                ):  # fmt: skip
                    parts.append(d.text)
            except ContextLengthError as exc:
                return ExpertAnswer(i, "", f"context length: {exc}")
            return ExpertAnswer(i, "".join(parts))

        # All requests at once (vLLM batches them); hand each back the moment it completes.
        yield from _as_completed(self.loop, [one(i, c) for i, c in enumerate(conversations)])

    def shutdown(self) -> None:
        self.engine.shutdown()


class _RaySession(ExpertSession):
    def __init__(self, actor: Any) -> None:
        self._actor = actor

    def answer(self, conversations: list[list[dict[str, str]]]) -> Iterator[ExpertAnswer]:
        import ray

        for ref in self._actor.answer.options(num_returns="streaming").remote(conversations):
            yield ray.get(ref)

    def close(self) -> None:
        import ray

        try:
            ray.get(self._actor.shutdown.remote(), timeout=60)
        finally:
            ray.kill(self._actor)


class RayVLLMBackend(AnswerBackend):
    """Each hosted expert in a Ray actor holding a vLLM engine, with the registry's resources and
    env; `backend: openai` experts are asked over HTTP from this process.
    Starts a local Ray instance unless one is running (or `RAY_ADDRESS` names a cluster)."""

    def __init__(self, num_cpus: int | None = None) -> None:
        self.num_cpus = num_cpus
        self._connected = False

    def shutdown(self) -> None:
        """Disconnect from Ray (stopping the local instance if this backend started one)."""
        if self._connected:
            import ray

            ray.shutdown()
            self._connected = False

    def open(self, expert: Expert, config: ProfileConfig) -> ExpertSession:
        if expert.backend == "openai":
            return _HTTPSession(expert, config)
        import ray

        if not ray.is_initialized():
            local = {} if os.environ.get("RAY_ADDRESS") else {"num_cpus": self.num_cpus}
            ray.init(ignore_reinit_error=True, include_dashboard=False, **local)
            self._connected = True
        if expert.model.startswith("builtin:"):  # only when this expert has work to do
            from experts.models import prepare_builtin_models

            prepare_builtin_models([expert.model.removeprefix("builtin:")])
        env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **expert.env}
        actor = ray.remote(_VLLMWorker).options(
            num_cpus=expert.resources.cpus, num_gpus=expert.resources.gpus,
            runtime_env={"env_vars": env}, name=f"profile-{expert.name}-{os.getpid()}",
        ).remote(expert.model_dump(mode="json"), config.__dict__)  # fmt: skip
        startup = ray.get(actor.startup_s.remote())  # engine load errors surface here
        log.info("expert %s loaded in %.1f s", expert.name, startup)
        return _RaySession(actor)


# -- the results log: append-only, what makes resume work ---------------------------------------


def expert_fingerprint(expert: Expert, config: ProfileConfig) -> str:
    """What an answer depends on besides the item: a changed model or sampling starts fresh."""
    basis = {"model": expert.model, "engine_args": expert.engine_args, "backend": expert.backend,
             "max_tokens": config.max_tokens, "temperature": config.temperature, "seed": config.seed}  # fmt: skip
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:12]


class ResultsLog:
    """`results.jsonl`: one graded answer per line, flushed and fsynced as it is written.

    A line cut short by an interruption is dropped on reading (that one answer is redone)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._rows: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        if path.exists():
            raw = path.read_bytes()
            if raw and not raw.endswith(b"\n"):
                # Drop a line cut short by an interruption, or the next append would join it.
                log.warning("%s: dropping an unfinished last line (interrupted write)", path)
                raw = raw[: raw.rfind(b"\n") + 1]
                with path.open("r+b") as f:
                    f.truncate(len(raw))
            for n, line in enumerate(raw.decode("utf-8").splitlines(), 1):
                try:
                    row = json.loads(line)
                    self._rows[self._key(row)] = row
                except (json.JSONDecodeError, KeyError):
                    log.warning("%s:%d: unreadable line (interrupted write?); redoing it", path, n)

    @staticmethod
    def _key(row: dict[str, Any]) -> tuple[str, str, str, str]:
        return (row["kind"], row["fingerprint"], row["item"], row["item_hash"])

    def get(self, kind: str, fingerprint: str, item: ValidationItem) -> dict[str, Any] | None:
        with self._lock:
            return self._rows.get((kind, fingerprint, item.id, item.digest()))

    def append(self, row: dict[str, Any]) -> None:
        line = json.dumps(row) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            self._rows[self._key(row)] = row

    def __len__(self) -> int:
        return len(self._rows)


# -- the job ------------------------------------------------------------------------------------

AGGREGATE_HEADER = "Answers proposed by other experts:"


def aggregation_conversation(item: ValidationItem, answers: Sequence[str]) -> list[dict[str, str]]:
    """The item's question with the other experts' answers appended, asking for a final answer."""
    messages = item.conversation()
    listed = "\n".join(
        f"Expert {i + 1}: {a.strip() or '(no answer)'}" for i, a in enumerate(answers)
    )
    messages[-1] = {**messages[-1], "content": f"{messages[-1]['content']}\n\n{AGGREGATE_HEADER}\n"
                    f"{listed}\n\nWeigh them and give the final answer in the format asked for."}  # fmt: skip
    return messages


class _Job:
    def __init__(self, registry: Registry, data: ValidationSet, backend: AnswerBackend,
                 results: ResultsLog, config: ProfileConfig) -> None:  # fmt: skip
        self.registry, self.data, self.backend = registry, data, backend
        self.results, self.config = results, config
        self.fp = {e.name: expert_fingerprint(e, config) for e in registry.experts}
        self.agg_items = data.items[: config.aggregate_items]
        self.new_answers = 0
        self._count_lock = threading.Lock()

    def pending(self, kind: str, expert: Expert, items: Sequence[ValidationItem]) -> list:
        return [it for it in items if self.results.get(kind, self.fp[expert.name], it) is None]

    def others_answers(self, expert: Expert, item: ValidationItem) -> list[str] | None:
        answers = []
        for other in self.registry.experts:
            if other.name != expert.name:
                row = self.results.get("answer", self.fp[other.name], item)
                if row is None:
                    return None
                answers.append(row["answer"])
        return answers

    def _ready_aggregations(self, expert: Expert) -> list[tuple[ValidationItem, list[str]]]:
        if not expert.can_aggregate or len(self.registry.experts) < 2:
            return []
        todo = self.pending("aggregate", expert, self.agg_items)
        ready = [(it, self.others_answers(expert, it)) for it in todo]
        return [(it, a) for it, a in ready if a is not None]

    def run_expert(self, expert: Expert, position: int) -> None:
        """Everything pending for one expert in one session: its answers, then its aggregations
        whose inputs exist. Opens no engine when nothing is pending."""
        answers = self.pending("answer", expert, self.data.items)
        if not answers and not self._ready_aggregations(expert):
            return
        session = self.backend.open(expert, self.config)
        try:
            self._run(
                session, expert, "answer", [(it, it.conversation()) for it in answers], position
            )
            aggs = self._ready_aggregations(expert)
            self._run(session, expert, "aggregate",
                      [(it, aggregation_conversation(it, a)) for it, a in aggs], position)  # fmt: skip
        finally:
            session.close()

    def _run(self, session: ExpertSession, expert: Expert, kind: str,
             work: list[tuple[ValidationItem, list[dict[str, str]]]], position: int) -> None:  # fmt: skip
        if not work:
            return
        from tqdm import tqdm

        bar = tqdm(total=len(work), desc=f"{expert.name} {kind}", unit="q", position=position,
                   disable=not self.config.progress, leave=True)  # fmt: skip
        with bar:
            for ans in session.answer([conv for _, conv in work]):
                item = work[ans.index][0]
                graded = item.grade(ans.text)
                self.results.append({
                    "kind": kind, "expert": expert.name, "fingerprint": self.fp[expert.name],
                    "item": item.id, "item_hash": item.digest(), "answer": ans.text,
                    "extracted": graded.extracted, "score": graded.score, "error": ans.error,
                    "time": time.time(),
                })  # fmt: skip
                with self._count_lock:
                    self.new_answers += 1
                bar.update(1)

    def run(self) -> None:
        # Aggregators last: by then the answers they synthesise exist, so each expert's engine is
        # loaded once. Several aggregators need each other's answers: the first pass leaves some
        # aggregations undone, a second pass (reloading only those experts) finishes them.
        order = sorted(self.registry.experts, key=lambda e: e.can_aggregate)
        for _ in range(2):
            if self.config.concurrency <= 1:  # in this thread, so Ctrl-C stops it at once
                for position, expert in enumerate(order):
                    self.run_expert(expert, position)
                continue
            with ThreadPoolExecutor(max_workers=self.config.concurrency) as pool:
                list(pool.map(self.run_expert, order, range(len(order))))


def run_profile(registry: Registry, data: ValidationSet, backend: AnswerBackend, out_dir: Path,
                *, store: StateStore | None = None, config: ProfileConfig | None = None) -> dict:  # fmt: skip
    """Run (or resume) the job in `out_dir`, write `<out_dir>/profile.json`, publish to `store`."""
    config = config or ProfileConfig()
    out_dir.mkdir(parents=True, exist_ok=True)
    results = ResultsLog(out_dir / "results.jsonl")
    job = _Job(registry, data, backend, results, config)
    started = time.perf_counter()
    job.run()
    rows = {kind: {e.name: [job.results.get(kind, job.fp[e.name], it) for it in data.items]
                   for e in registry.experts} for kind in ("answer", "aggregate")}  # fmt: skip
    profile = compute_profile(registry, data, rows, config.prior_strength)
    used = sum(
        r is not None for per_kind in rows.values() for per in per_kind.values() for r in per
    )
    profile["job"] = {"new_answers": job.new_answers, "reused_answers": used - job.new_answers,
                      "elapsed_s": round(time.perf_counter() - started, 2), "out_dir": str(out_dir),
                      **{k: v for k, v in config.__dict__.items() if k != "progress"}}  # fmt: skip
    tmp = out_dir / "profile.json.tmp"
    tmp.write_text(json.dumps(profile, indent=2))
    tmp.replace(out_dir / "profile.json")  # atomic: readers never see half a file
    if store is not None:
        store.publish_profile(profile)
    return profile


# -- command line -------------------------------------------------------------------------------


def default_out_dir(registry: Registry, data: ValidationSet) -> Path:
    """`$QUORUM_HOME/profiles/<registry hash>-<data hash>`: rerunning a command resumes it."""
    from experts._paths import quorum_home

    reg = hashlib.sha256(json.dumps(registry.model_dump(mode="json"), sort_keys=True).encode())
    return quorum_home() / "profiles" / f"{reg.hexdigest()[:10]}-{data.digest[:10]}"


def build_parser() -> argparse.ArgumentParser:
    """Arguments of `python -m skills.profile` (and `quorum profile`)."""
    p = argparse.ArgumentParser(prog="quorum profile", description="Measure each expert's "
                                "competence per skill on a labelled validation set.")  # fmt: skip
    p.add_argument("--registry", help="expert registry YAML (default: the embedded default)")
    p.add_argument("--data", required=True, help="validation set JSONL (skills/validation.py)")
    p.add_argument("--out", type=Path, help="results and profile folder; rerun with the same one "
                   "to resume (default: $QUORUM_HOME/profiles/<registry>-<data>)")  # fmt: skip
    p.add_argument("--redis-url", help="publish to this Redis (default: $QUORUM_REDIS_URL; "
                   "without either, the profile is only written to <out>/profile.json)")  # fmt: skip
    p.add_argument("--no-publish", action="store_true", help="write the JSON file only")
    d = ProfileConfig()
    p.add_argument("--max-tokens", type=int, default=d.max_tokens, help="per answer")
    p.add_argument("--prior-strength", type=float, default=d.prior_strength,
                   help="pseudo-observations behind the registry's prior competence")  # fmt: skip
    p.add_argument("--aggregate-items", type=int, default=d.aggregate_items,
                   help="questions each aggregator synthesises (0: skip)")  # fmt: skip
    p.add_argument("--concurrency", type=int, default=d.concurrency, help="experts run at once")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _summary(profile: dict) -> str:
    lines = [f"profile {profile['version']}  ({profile['job']['new_answers']} new answers, "
             f"{profile['job']['reused_answers']} reused, {profile['job']['elapsed_s']} s)"]  # fmt: skip
    for name, x in profile["experts"].items():
        g = x["global"]
        lines.append(f"  {name:<20} global {g['competence']:.3f} {g['ci95']}  "
                     f"({g['correct']:g}/{g['n']} correct)")  # fmt: skip
        for skill, v in x["skills"].items():
            lines.append(
                f"    {skill:<18} {v['competence']:.3f} {v['ci95']}  ({v['correct']:g}/{v['n']})"
            )
        if x["aggregator"]:
            a = x["aggregator"]
            lines.append(f"    as aggregator      {a['competence']:.3f} {a['ci95']}  accuracy "
                         f"{a['accuracy']:.2f} vs best single {a['best_single_accuracy']:.2f}")  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, *, backend: AnswerBackend | None = None,
         store: StateStore | None = None) -> int:  # fmt: skip
    """Run the profiling job; 0 on success, 2 on a configuration error, 130 when interrupted."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out: Path | None = None
    try:
        from experts.registry import load_registry
        from skills.validation import load_validation_set

        registry = load_registry(args.registry)
        data = load_validation_set(args.data, skills=registry.skills)
        url = args.redis_url or os.environ.get("QUORUM_REDIS_URL")
        if store is None and url and not args.no_publish:
            from skills.redis_store import RedisStateStore

            store = RedisStateStore.from_url(url)  # before the job: a wrong URL fails now
        if backend is None:
            backend = RayVLLMBackend(num_cpus=max(os.cpu_count() or 1, 2))
        out = args.out or default_out_dir(registry, data)
        config = ProfileConfig(max_tokens=args.max_tokens, prior_strength=args.prior_strength,
                               aggregate_items=args.aggregate_items, concurrency=args.concurrency,
                               progress=not args.no_progress)  # fmt: skip
        try:
            profile = run_profile(registry, data, backend, out,
                                  store=None if args.no_publish else store, config=config)  # fmt: skip
        finally:
            if isinstance(backend, RayVLLMBackend):
                backend.shutdown()
    except QuorumError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        where = f" in {out / 'results.jsonl'}" if out else ""
        print(f"interrupted; finished answers are saved{where}; rerun the same command to resume",
              file=sys.stderr)  # fmt: skip
        return 130
    print(_summary(profile))
    print(f"written to {out / 'profile.json'}" + (f"; published to {store.url}"
          if store is not None and hasattr(store, "url") and not args.no_publish else ""))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
