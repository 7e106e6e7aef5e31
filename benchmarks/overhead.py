"""Gateway overhead: Quorum against a plain Ray Serve passthrough and LiteLLM's proxy.

    python -m benchmarks.overhead [--repeats 2] [--seconds 5] [--profile] [--no-results]

One stub OpenAI-compatible backend (benchmarks/stub_openai.py, its own process) stands behind
every target; the targets run one at a time, each in its own processes:

- `stub direct`: the backend itself (the floor);
- `ray serve passthrough`: one FastAPI deployment forwarding with httpx, with Quorum's Serve
  options (benchmarks/passthrough.py);
- `litellm proxy`: LiteLLM's proxy, one worker, installed by this command into its own venv
  (`$QUORUM_HOME/bench-venvs/litellm-<version>`; a version other than the compromised 1.82.7/8);
- `quorum auto` / `quorum named`: `quorum serve` on a registry of three `openai`-backend experts
  on the stub; `model=auto` (classify + recruit) and a named expert (no classification).

Each target gets concurrency 1 and 32, a short prompt (7 words) and a long one (the held-out
MMLU-Pro dev prompt closest to 250 words, 10 options), `max_tokens=16`, non-streaming, closed loop
for `--seconds` after a warm-up; `--repeats` rounds of each target (started once), medians
reported. Quorum's
classify and route milliseconds come from each response's `quorum` extension. `--profile` also
samples Quorum's ingress replica and Serve proxy with py-spy during one more round of the Quorum
cells (benchmarks/overhead_profile.py). Writes section `overhead` of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._results import machine_description, write_section
from benchmarks.http_load import Result, closed_loop
from serving.serve_options import unused_port

ROOT = Path(__file__).resolve().parent.parent
LITELLM_VERSION = "1.80.0"  # not 1.82.7/1.82.8 (compromised releases)
SHORT = "What is the capital city of France?"
EXPERTS = ("stub-a", "stub-b", "stub-c")
CELLS = [(1, "short"), (1, "long"), (32, "short"), (32, "long")]
# `quorum serve` puts Ray Serve's HAProxy ingress on the HTTP port (serving/serve_options.py);
# target `quorum-proxy` measures the same service behind Serve's Python proxy actor instead.
PYTHON_PROXY_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
COMMAND = "python -m benchmarks.overhead"


def long_prompt() -> str:
    from router.train import is_held_out, read_rows

    held = [r for r in read_rows() if is_held_out(r["id"])]
    return min(held, key=lambda r: (abs(len(r["prompt"].split()) - 250), r["id"]))["prompt"]


class Target:
    """A gateway under test: started, probed until it answers, measured, stopped."""

    def __init__(self, name: str, url: str, model: str, argv: list[str] | None = None,
                 env: dict | None = None, headers: dict | None = None,
                 cwd: Path = ROOT) -> None:  # fmt: skip
        self.name, self.url, self.model, self.argv, self.cwd = name, url, model, argv, cwd
        self.env, self.headers = env or {}, headers or {}
        self.proc: subprocess.Popen | None = None
        self.log = Path(tempfile.gettempdir()) / f"overhead-{name.replace(' ', '-')}.log"

    def body(self, text: str) -> bytes:
        return json.dumps({"model": self.model, "max_tokens": 16, "temperature": 0,
                           "messages": [{"role": "user", "content": text}]}).encode()  # fmt: skip

    def start(self, timeout: float = 600) -> None:
        if self.argv:
            env = os.environ | {"PYTHONUNBUFFERED": "1"} | self.env
            self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=env, stdout=self.log.open("w"),
                                         stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
            result = asyncio.run(closed_loop(self.url, self.body(SHORT), 1, 0.01, self.headers,
                                             timeout_s=10))  # fmt: skip
            if result.latencies:
                return
            # Up, but refusing the benchmark's request: no point waiting. A 404 is not that: an
            # ingress (HAProxy's) answers 404 until Serve gives it the application's route.
            refused = [e for e in result.errors
                       if e.startswith("HTTP 4") and not e.startswith("HTTP 404")]  # fmt: skip
            if refused:
                raise RuntimeError(f"{self.name} refused the request: {refused[0]}")
            time.sleep(1)
        raise RuntimeError(
            f"{self.name} did not answer in {timeout}s:\n{self.log.read_text()[-3000:]}"
        )

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        try:  # Ray's own processes of this session, if any outlived the driver
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def measure(target: Target, prompts: dict[str, str], seconds: float) -> dict:
    """Every cell once: warm-up, then `seconds` of closed-loop load."""
    rows = {}
    for concurrency, prompt in CELLS:
        body = target.body(prompts[prompt])
        asyncio.run(closed_loop(target.url, body, concurrency, 1.0, target.headers))  # warm-up
        result = asyncio.run(closed_loop(target.url, body, concurrency, seconds, target.headers))
        rows[(concurrency, prompt)] = summarise(result)
        print(f"  {target.name:<22} c={concurrency:<2} {prompt:<5} p50 {rows[(concurrency, prompt)]['p50']:8.1f} ms"
              f"  {rows[(concurrency, prompt)]['rate']:7.1f} req/s  errors {len(result.errors)}", flush=True)  # fmt: skip
    return rows


def summarise(result: Result) -> dict:
    row = {"p50": result.p50 * 1000, "p95": result.percentile(0.95) * 1000, "rate": result.rate,
           "errors": len(result.errors), "requests": len(result.latencies),
           "error_sample": result.errors[:2]}  # fmt: skip
    classify, route = [], []
    for body in result.bodies:
        ext = json.loads(body).get("quorum") if body.startswith(b"{") else None
        if ext:
            route.append(ext.get("route_ms", 0.0))
            classify.append((ext["routing"].get("latency_ms") or {}).get("classify", 0.0))
    if route:
        row |= {"classify_ms": statistics.median(classify), "route_ms": statistics.median(route)}
    return row


def litellm_target(stub_url: str, home: Path, port: int) -> Target:
    venv = home / "bench-venvs" / f"litellm-{LITELLM_VERSION}"
    if not (venv / "bin" / "litellm").exists():
        print(f"installing litellm[proxy]=={LITELLM_VERSION} into {venv}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q",
                        f"litellm[proxy]=={LITELLM_VERSION}"], check=True)  # fmt: skip
    config = home / "bench-venvs" / "litellm-overhead.yaml"
    models = "".join(
        f"  - model_name: {name}\n    litellm_params: {{model: openai/{name}, "
        f'api_base: "{stub_url}", api_key: stub}}\n'
        for name in EXPERTS
    )
    config.write_text(f"model_list:\n{models}litellm_settings:\n  telemetry: false\n")
    argv = [str(venv / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1",
            "--port", str(port), "--num_workers", "1"]  # fmt: skip
    env = {"LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "PYTHONPATH": ""}
    return Target("litellm proxy", f"http://127.0.0.1:{port}/v1/chat/completions", EXPERTS[0],
                  argv, env)  # fmt: skip


def quorum_registry(stub_url: str, path: Path, encoder: str | None = None) -> Path:
    experts = "".join(
        f'  - {{name: {name}, backend: openai, base_url: "{stub_url}", model: {name},\n'
        f"     default_competence: {0.5 + 0.1 * i:.1f}, cost: {{input_per_1m: {i + 1}, "
        f"output_per_1m: {i + 1}}}}}\n"
        for i, name in enumerate(EXPERTS)
    )
    router = f"router:\n  classifier: {{encoder: {encoder}}}\n" if encoder else ""
    path.write_text(f"{router}experts:\n{experts}")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0, help="load per cell (after warm-up)")
    parser.add_argument("--targets", default="stub,passthrough,litellm,quorum")
    parser.add_argument("--quorum-src", type=Path, default=ROOT,
                        help="checkout whose `quorum serve` is measured (default: this one)")  # fmt: skip
    parser.add_argument("--profile", action="store_true", help="py-spy Quorum's ingress and proxy")
    parser.add_argument("--shared", default="", help="a note on what else ran on the machine")
    parser.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    parser.add_argument("--section", default="overhead", help="RESULTS.md section to write")
    parser.add_argument("--title", default="Gateway overhead: Quorum vs Ray Serve passthrough vs "
                        "LiteLLM (issue 15)")  # fmt: skip
    args = parser.parse_args(argv)
    from experts.paths import quorum_home

    home = quorum_home()
    work = Path(tempfile.mkdtemp(prefix="quorum-overhead-"))
    prompts = {"short": SHORT, "long": long_prompt()}
    stub_port = unused_port()
    stub = Target("stub direct", f"http://127.0.0.1:{stub_port}/v1/chat/completions", EXPERTS[0],
                  [sys.executable, "-m", "benchmarks.stub_openai", str(stub_port)])  # fmt: skip
    stub_url = f"http://127.0.0.1:{stub_port}/v1"
    targets: list[tuple[str, list[Target]]] = []
    wanted = args.targets.split(",")
    if "passthrough" in wanted:
        port = unused_port()
        targets.append(("passthrough", [Target(
            "ray serve passthrough", f"http://127.0.0.1:{port}/v1/chat/completions", EXPERTS[0],
            [sys.executable, "-m", "benchmarks.passthrough", "--port", str(port),
             "--upstream", stub_url], {"PYTHONPATH": str(ROOT)})]))  # fmt: skip
    if "litellm" in wanted:
        targets.append(("litellm", [litellm_target(stub_url, home, unused_port())]))
    for spec in ("static", "minilm"):  # Quorum's app without Ray Serve, by encoder
        if f"app-{spec}" in wanted:
            port = unused_port()
            registry = quorum_registry(stub_url, work / f"registry-{spec}.yaml", spec)
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            argv_a = [sys.executable, "-m", "benchmarks.quorum_app", "--port", str(port),
                      "--registry", str(registry)]  # fmt: skip
            env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
            targets.append((f"app-{spec}", [
                Target(f"quorum app {spec} auto", url, "auto", argv_a, env),
                Target(f"quorum app {spec} named", url, EXPERTS[0]),
            ]))  # fmt: skip
    for key, label, env in (("quorum", "quorum", {}),
                            ("quorum-proxy", "quorum python-proxy", PYTHON_PROXY_ENV)):  # fmt: skip
        if key not in wanted:
            continue
        port, src = unused_port(), args.quorum_src.resolve()
        argv_q = [sys.executable, "-m", "serving.cli", "serve", "--port", str(port),
                  "--metrics-port", str(unused_port()), "--registry",
                  str(quorum_registry(stub_url, work / "registry.yaml"))]  # fmt: skip
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        auto = Target(f"{label} auto", url, "auto", argv_q, {"PYTHONPATH": str(src)} | env, cwd=src)
        targets.append((key, [auto, Target(f"{label} named", url, EXPERTS[0])]))

    runs: dict[str, list[dict]] = {}
    profiles: list[str] = []
    stub.start()
    try:
        if "stub" in wanted:
            runs[stub.name] = [measure(stub, prompts, args.seconds) for _ in range(args.repeats)]
        for _, group in targets:  # one target at a time; its rounds back to back
            try:
                group[0].start()  # inside: a target that fails to come up is stopped too
                for round_ in range(args.repeats):
                    print(f"{group[0].name}: round {round_ + 1}/{args.repeats}", flush=True)
                    for target in group:
                        runs.setdefault(target.name, []).append(
                            measure(target, prompts, args.seconds)
                        )
                if args.profile and group[0].name.startswith("quorum"):
                    from benchmarks.overhead_profile import profile_quorum

                    pids = {"app": group[0].proc.pid} if "app" in group[0].name else None
                    profiles.append(f"**{group[0].name.removesuffix(' auto')}**: "
                                    + profile_quorum(group, prompts, args.seconds, pids))  # fmt: skip
            finally:
                group[0].stop()
    finally:
        stub.stop()
    body = report(runs, prompts, args)
    if profiles:
        body += "\n\n" + "\n\n".join(profiles)
    print(body)
    if not args.no_results:
        note = f"; {args.shared}" if args.shared else ""
        command = shlex.join([*COMMAND.split(), *(argv if argv is not None else sys.argv[1:])])
        write_section(args.section, args.title, command, machine_description() + note, body)
    return 0


def median_row(rows: list[dict]) -> dict:
    keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float))]
    return {k: statistics.median(r[k] for r in rows if k in r) for k in keys}


def report(runs: dict[str, list[dict]], prompts: dict[str, str], args) -> str:
    med = {name: {cell: median_row([r[cell] for r in rounds]) for cell in CELLS}
           for name, rounds in runs.items()}  # fmt: skip
    lines = [
        f"Stub OpenAI backend behind every target; body `max_tokens=16`, non-streaming; short "
        f"prompt {len(SHORT.split())} words, long prompt {len(prompts['long'].split())} words "
        f"(MMLU-Pro held-out, 10 options); closed loop {args.seconds:g} s per cell after 1 s of "
        f"warm-up; medians of {args.repeats} rounds (targets one at a time, each started once, "
        "in the same run). "
        f"LiteLLM {LITELLM_VERSION}, proxy with one worker. Classify/route: Quorum's own "
        "timings from the response's `quorum` extension (median per request).", "",
        "| target | c | prompt | p50 ms | p95 ms | req/s | errors | classify ms | route ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name, cells in med.items():
        for (c, prompt), row in cells.items():
            extra = (f"{row['classify_ms']:.2f} | {row['route_ms']:.2f}" if "route_ms" in row
                     else "- | -")  # fmt: skip
            lines.append(f"| {name} | {c} | {prompt} | {row['p50']:.1f} | {row['p95']:.1f} | "
                         f"{row['rate']:.1f} | {row['errors']:g} | {extra} |")  # fmt: skip
    lines += ["", ratios(med)]
    return "\n".join(lines)


def ratios(med: dict[str, dict]) -> str:
    """The issue's targets, each computed from the medians above, for every Quorum variant run."""
    out = ["| target (issue 15) | prompt | measured | met |", "|---|---|---|---|"]
    lite, passthrough = med.get("litellm proxy"), med.get("ray serve passthrough")
    prefixes = [
        n.removesuffix(" auto") for n in med if n.startswith("quorum") and n.endswith("auto")
    ]
    for prefix, prompt in [(p, q) for p in prefixes for q in ("short", "long")]:
        auto, named = med[f"{prefix} auto"], med.get(f"{prefix} named")
        if lite:
            a, b = auto[(32, prompt)], lite[(32, prompt)]
            ok = a["rate"] >= b["rate"] and a["errors"] == 0
            out.append(f"| c=32 req/s: {prefix} auto >= litellm, 0 errors | {prompt} | "
                       f"{a['rate']:.1f} vs {b['rate']:.1f} ({a['rate'] / b['rate']:.2f}x), "
                       f"{a['errors']:g} errors | {'yes' if ok else 'no'} |")  # fmt: skip
        if named:
            d = auto[(1, prompt)]["p50"] - named[(1, prompt)]["p50"]
            out.append(f"| c=1 p50: {prefix} auto - named <= 5 ms | {prompt} | {d:+.1f} ms | "
                       f"{'yes' if d <= 5 else 'no'} |")  # fmt: skip
        if named and passthrough and prefix == "quorum":
            d = named[(1, prompt)]["p50"] - passthrough[(1, prompt)]["p50"]
            out.append(f"| c=1 p50: quorum named - passthrough <= 5 ms | {prompt} | {d:+.1f} ms | "
                       f"{'yes' if d <= 5 else 'no'} |")  # fmt: skip
    for prompt in ("short", "long") if passthrough and lite else ():
        a, b = passthrough[(32, prompt)], lite[(32, prompt)]
        out.append(
            f"| (context) c=32 req/s: passthrough vs litellm | {prompt} | "
            f"{a['rate']:.1f} vs {b['rate']:.1f} ({a['rate'] / b['rate']:.2f}x) | - |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
