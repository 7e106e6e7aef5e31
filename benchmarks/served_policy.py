"""The policy the service loads, measured on the MMLU-Pro dev split: the live code path end to end.

    .venv/bin/python -m benchmarks.served_policy [--kinds knn,predictor,...] [--no-results]

For each policy kind: `quorum fit-policy`'s code (`skills.fit_policy.fit_and_save`) fits it on the
train half and writes the `.npz` artifact; `router.artifact.load_policy` reads it back and
`router.live_policy.ServedPolicy` binds it to a registry of the 12 pool models (cost = active
parameters), exactly as `quorum serve` does. On the test half this reports the least cost for
80/90/95% of the best single model's accuracy and APGR from the served policy's predictions, that
they equal the in-process policy's (the table `quorum eval-routing` makes), and what
`target_cost` (a fraction of the most expensive expert's cost) reaches on the test half with the
λ the served policy calibrates from its artifact. Writes the "served-policy" section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.routing_quality import _Precomputed
from experts.registry import parse_registry
from router.artifact import load_policy
from router.classify import MiniLMEncoder, encode_cached
from router.live_policy import ServedPolicy
from router.policies import POLICIES, make_policy
from router.recruit import LAMBDA_GRID, recruit
from skills._routing_report import summarise, sweep
from skills.fit_policy import TrainingRows, fit_and_save
from skills.outcomes import OutcomeTable, load_models, load_outcomes
from skills.routing_eval import split_by_hash

DATA = Path(__file__).resolve().parents[1] / "skills" / "data"
COMMAND = ".venv/bin/python -m benchmarks.served_policy"
TARGETS = (0.1, 0.2, 0.3, 0.5)  # of the most expensive pool model's cost (111, Qwen1.5-110B)


def pool_registry(pool: list[str], cost: np.ndarray):
    """A registry of the pool models as experts (not served here; ServedPolicy only reads names
    and costs), so the artifact goes through the same checks as in `quorum serve`."""
    return parse_registry({
        "experts": [{"name": n.replace(".", "_"), "model": n, "backend": "openai",
                     "base_url": "http://127.0.0.1:9/v1",
                     "cost": {"input_per_1m": float(c), "output_per_1m": float(c)}}
                    for n, c in zip(pool, cost, strict=True)],
    })  # fmt: skip


def measure(kinds: list[str]) -> tuple[dict, str]:
    questions = load_outcomes(DATA / "mmlu_pro_dev.jsonl.gz")
    models = load_models(DATA / "mmlu_pro_models.yaml")
    pool = models.resolve_pool(None)
    names = [n.replace(".", "_") for n in pool]  # registry names may not contain dots
    cost = models.costs(pool)
    train, test = split_by_hash(questions, 0.5)
    prompts = [q.prompt for q in questions]  # the cache benchmarks.routing_quality fills
    minilm = MiniLMEncoder()
    encoder = _Precomputed(minilm, prompts, encode_cached(minilm, prompts))
    te = OutcomeTable.build(test, pool)
    te = te.subset(te.complete_rows())
    emb_te = encoder.encode(te.prompts)
    train_acc = np.nanmean(OutcomeTable.build(train, pool).correct, axis=0)
    best = int(np.argmax(train_acc))
    ref = {"model": pool[best], "accuracy": float(te.correct[:, best].mean()),
           "cost": float(cost[best])}  # fmt: skip
    cheap = int(np.lexsort((-te.correct.mean(0), cost))[0])
    weak = (float(te.correct[:, cheap].mean()), float(cost[cheap]))
    registry = pool_registry(pool, cost)
    rows = TrainingRows(names)
    for q in train:
        rows.add(q.prompt, q.category, {n: q.outcomes.get(m) for n, m in zip(names, pool, strict=True)},
                 "outcomes")  # fmt: skip
    emb_tr = encoder.encode(rows.prompts)
    report: dict = {"reference": ref, "n_train": len(rows.prompts), "n_test": len(te), "kinds": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            path = Path(tmp) / f"{kind}.npz"
            fit_and_save(kind, rows, encoder, path)
            served = ServedPolicy(load_policy(path), registry, encoder.name)
            quality = served.quality(emb_te)  # [M, E], registry order == pool order
            direct = make_policy(kind).fit(emb_tr, np.array(rows.outcomes), rows.categories)
            diff = float(np.abs(direct.predict_quality(emb_te) - quality).max())
            entry = {**summarise(sweep(quality, te, cost, 1, LAMBDA_GRID), ref, weak),
                     "max_abs_diff_vs_in_process": diff, "version": served.version,
                     "artifact_bytes": path.stat().st_size, "targets": []}  # fmt: skip
            entry.pop("curve")
            for target in TARGETS:
                lam = served.knob(list(range(len(pool))), cost, target)
                chosen = recruit(quality, cost, lam)[:, 0]
                entry["targets"].append({
                    "target": target, "knob": round(lam, 5),
                    "reached": round(float(cost[chosen].mean() / cost.max()), 4),
                    "accuracy": round(float(te.correct[np.arange(len(te)), chosen].mean()), 4),
                })  # fmt: skip
            report["kinds"][kind] = entry
    return report, table(report)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.0f}%"


def table(report: dict) -> str:
    ref = report["reference"]
    lines = [
        f"Fitted with `quorum fit-policy`'s code on the train half ({report['n_train']} "
        f"questions), saved as `.npz`, loaded and bound to a 12-expert registry as `quorum serve` "
        f"does; scored on the test half ({report['n_test']}). Best single model: {ref['model']} "
        f"({ref['accuracy']:.3f} at cost {ref['cost']:g}).",
        "",
        "| served policy | cost for 80% | 90% | 95% | APGR | max abs diff vs in-process fit |"
        " artifact |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, e in report["kinds"].items():
        cf = e["cost_fraction_at"]
        lines.append(
            f"| `{kind}` @{e['version']} | {_pct(cf['0.8'])} | {_pct(cf['0.9'])} | "
            f"{_pct(cf['0.95'])} | {e['apgr']} | {e['max_abs_diff_vs_in_process']:.1e} | "
            f"{e['artifact_bytes'] / 1e6:.1f} MB |"
        )
    lines += [
        "",
        "`target_cost` (fraction of the most expensive expert's cost, 111) → λ from the "
        "artifact's calibration → cost reached and accuracy on the test half:",
        "",
        "| served policy | " + " | ".join(f"target {_pct(t)}" for t in TARGETS) + " |",
        "|---|" + "---|" * len(TARGETS),
    ]
    for kind, e in report["kinds"].items():
        cells = [f"{_pct(t['reached'])} reached, acc {t['accuracy']:.3f}" for t in e["targets"]]
        lines.append(f"| `{kind}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kinds", default=",".join(POLICIES), help="comma-separated policies")
    parser.add_argument("--no-results", action="store_true", help="leave RESULTS.md alone")
    args = parser.parse_args(argv)
    _, body = measure([k.strip() for k in args.kinds.split(",") if k.strip()])
    print(body)
    if not args.no_results:
        from benchmarks._results import machine_description, write_section

        write_section("served-policy", "Routing: the policy the service loads (MMLU-Pro dev)",
                      COMMAND, machine_description(), body)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
