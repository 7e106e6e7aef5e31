"""The profiling job: run every expert over a validation set, grade, and publish a versioned profile.

    python -m skills.profile --data skills/data/tiny_profile_set.jsonl [--registry FILE]
                             [--redis-url URL] [--out DIR] [--max-tokens 16]

Work is grouped by expert (batch-by-expert): one Ray actor per expert loads its vLLM engine once,
answers all of that expert's pending questions in one batch and streams each answer back as it
finishes (skills/backends.py); experts run one after another by default (`--concurrency`), which
is what a 2-core machine affords. Each graded answer is appended to `<out>/results.jsonl` the
moment it arrives, keyed by (kind, expert fingerprint, item id, item hash): a rerun of the same
command skips what is there, so an interrupted job resumes without recomputing or losing results,
and an expert whose work is all done does not even load its engine.

Competence (Symbolic-MoE's local competence, with uncertainty): per expert and skill, a Beta
posterior over P(correct). Its prior mean is the registry's prior competence for that skill and
its weight is `prior_strength` pseudo-observations (default 2), so a handful of answers moves it
only partway: α = s·m + correct, β = s·(1−m) + wrong; `competence` is the posterior mean α/(α+β),
`ci95` the central 95 % interval. `global` is the same over all items (prior mean: the expert's
mean prior over the set's skills) plus `share`, its competence normalised over the pool
(Symbolic-MoE's global competence). Items with several skills count fully for each.

Aggregator ability, measured directly as Symbolic-MoE does: each `can_aggregate` expert gets the
first `aggregate_items` questions with the other experts' answers appended (the service's own
synthesis prompt, `experts.answers.synthesis_messages`), and its synthesis is graded like any
answer. The profile records its Beta posterior, the best single expert's accuracy on the same
items and the gain over it; the top-level `aggregator` is the best one.

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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from experts.answers import synthesis_messages
from experts.errors import QuorumError
from experts.paths import go_offline, quorum_home
from experts.registry import Expert, Registry
from skills.backends import (
    AnswerBackend,
    ExpertAnswer,
    ExpertSession,
    ProfileConfig,
    RayVLLMBackend,
)
from skills.competence import compute_profile
from skills.store import StateStore
from skills.validation import ValidationItem, ValidationSet

__all__ = ["AnswerBackend", "ExpertAnswer", "ExpertSession", "ProfileConfig", "RayVLLMBackend",
           "ResultsLog", "main", "run_profile"]  # fmt: skip

log = logging.getLogger(__name__)


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
                      [(it, synthesis_messages(it.conversation(), a)) for it, a in aggs], position)  # fmt: skip
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
    go_offline()
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
