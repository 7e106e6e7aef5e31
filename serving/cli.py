"""The `quorum` command.

quorum serve [--registry FILE] [--host H] [--port P]   run the service (Ray Serve)
quorum route [--registry FILE] [--model M] [--json] TEXT   print the routing decision only
quorum models prepare [NAME ...] [--force]             materialise the built-in tiny models (and,
                                                         without NAME, the static encoder's table)
quorum models list                                     show the built-in models and their folders
quorum eval-routing ...                                routing quality on outcome data
quorum fit-policy ...                                  fit the routing policy the service serves
quorum train-classifier --outcomes FILE --out HEAD     skill taxonomy + head from the data's categories
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import time

from experts.errors import QuorumError
from experts.paths import go_offline

log = logging.getLogger("quorum")


def _serve(args: argparse.Namespace) -> int:
    from serving.serve_options import apply_serve_env

    apply_serve_env()  # before Ray is imported or started: its processes inherit it (see there)
    import ray
    from ray import serve

    from experts.registry import load_registry
    from serving.deployments import build_app

    registry = load_registry(args.registry)  # fail fast, before Ray starts
    builtin = sorted({e.model.removeprefix("builtin:") for e in registry.experts
                      if e.backend == "vllm" and e.model.startswith("builtin:")})  # fmt: skip
    if builtin:
        from experts.models import prepare_builtin_models

        prepare_builtin_models(builtin)
    if registry.router.classifier.encoder == "static":
        from router.static_encoder import ensure_table

        ensure_table()  # distilled from MiniLM once (minutes), here rather than in the ingress
    go_offline()
    metrics_socket = _reserve_metrics_port(args.metrics_port)
    metrics_port = metrics_socket.getsockname()[1]
    started = time.perf_counter()
    # Logical CPUs: engines reserve whole CPUs, so a 2-core machine still needs room for the
    # ingress replica (ENVIRONMENT.md: with num_cpus=2 the ingress could not be placed).
    ray.init(
        num_cpus=max(os.cpu_count() or 1, int(sum(e.resources.cpus for e in registry.experts)) + 2),
        include_dashboard=True,
        dashboard_host=args.host,
        ignore_reinit_error=True,
        _metrics_export_port=metrics_port,
    )
    metrics_socket.close()  # Ray's metrics agent holds the port now
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(build_app({"registry": args.registry, "redis_url": args.redis_url}),
              name="quorum", route_prefix="/")  # fmt: skip
    context = ray.get_runtime_context()
    dashboard = getattr(context, "dashboard_url", None) or ray.worker.get_dashboard_url()
    print(f"Quorum is up in {time.perf_counter() - started:.1f}s", flush=True)
    print(
        f"  OpenAI API     http://{args.host}:{args.port}/v1  (models: "
        f"{', '.join([v.name for v in registry.virtual_models] + [e.name for e in registry.experts])})"
    )
    if dashboard:
        dashboard = dashboard if "://" in dashboard else f"http://{dashboard}"
        print(f"  Ray dashboard  {dashboard}  (Serve view: {dashboard}/#/serve)")
    else:
        print("  Ray dashboard  (not running)")
    metrics_host = (
        args.host if args.host not in ("0.0.0.0", "::") else ray.util.get_node_ip_address()
    )
    print(f"  Metrics        http://{metrics_host}:{metrics_port}/metrics  (Prometheus; Ray's "
          "metrics agent, names prefixed ray_quorum_)")  # fmt: skip
    print("  Stop with Ctrl-C (or SIGTERM)", flush=True)
    # SIGTERM (Kubernetes, systemd, docker stop) shuts down like Ctrl-C: Serve and Ray stop, and
    # HAProxy lets go of the API port, instead of the process dying with them left running.
    # SIGINT is set too: started in the background by a script (`quorum serve &`), the process
    # inherits SIGINT ignored and Python installs no KeyboardInterrupt, so `kill -INT` did nothing
    # (checked: no shutdown in 90 s).
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("shutting down", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _reserve_metrics_port(wanted: int) -> socket.socket:
    """A socket bound to `wanted`, or to a free port when `wanted` is taken (a warning names it).

    Held until Ray's metrics agent has bound the port: a second `quorum serve` starting at the same
    moment (tests on a shared machine) then sees the port taken instead of both choosing it and one
    Ray failing to start. The probe binds without SO_REUSEADDR, so it fails on any bound socket;
    the held socket then sets SO_REUSEADDR and never listens, so Ray's agent (which binds with
    SO_REUSEADDR) can still take the port."""
    from serving.serve_options import bind_port_or_free

    held = bind_port_or_free(wanted)
    if wanted and held.getsockname()[1] != wanted:  # 0: any free port was asked for
        log.warning("metrics port %d is taken; Ray exports metrics on %d instead "
                    "(pass --metrics-port to choose)", wanted, held.getsockname()[1])  # fmt: skip
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return held


def _route(args: argparse.Namespace) -> int:
    from experts.registry import load_registry
    from serving.deployments import build_router, make_store

    registry = load_registry(args.registry)
    router = build_router(registry, make_store(args.redis_url))
    decision = router.route(args.text, args.model)
    if args.json:
        print(json.dumps(decision.to_dict(), indent=2))
        return 0
    skills = ", ".join(f"{s['skill']} {s['probability']:.2f}" for s in decision.skills)
    print(f"skills:     {skills or '-'}  (confidence {decision.confidence})")
    print(f"experts:    {', '.join(decision.experts)}")
    if decision.recruitment:
        for s in decision.recruitment["scores"]:
            print(
                f"  {s['expert']:<24} quality {s['quality']:.4f}  cost {s['relative_cost']:.3f}"
                f"  utility {s['utility']:.4f}"
            )
    return 0


def _models(args: argparse.Namespace) -> int:
    from experts.models import BUILTIN_MODELS, builtin_model_dir, prepare_builtin_models

    if args.models_command == "prepare":
        for name, path in prepare_builtin_models(args.names or None, force=args.force).items():
            print(f"{name}: {path}")
        if not args.names:  # everything the default registry needs offline: the router's table too
            from router.static_encoder import ensure_table

            print(f"static encoder table: {ensure_table()}")
        return 0
    for name in BUILTIN_MODELS:
        path = builtin_model_dir(name)
        print(f"{name:<24} {'ready' if path.exists() else 'not prepared'}  {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quorum", description="Skill-routed mixture of expert LLMs."
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    serve_p = sub.add_parser("serve", help="run the OpenAI-compatible service on Ray Serve")
    serve_p.add_argument("--registry", help="expert registry YAML (default: the embedded default)")
    serve_p.add_argument("--host", default="127.0.0.1")
    serve_p.add_argument("--port", type=int, default=8000)
    serve_p.add_argument(
        "--redis-url", help="Redis for shared state (default: $QUORUM_REDIS_URL, else in process)"
    )
    serve_p.add_argument(
        "--metrics-port", type=int, default=int(os.environ.get("QUORUM_METRICS_PORT", 8080)),
        help="port of Ray's Prometheus metrics endpoint (default: $QUORUM_METRICS_PORT, else 8080)",
    )  # fmt: skip
    serve_p.set_defaults(func=_serve)

    route_p = sub.add_parser("route", help="print the routing decision for TEXT without generating")
    route_p.add_argument("text")
    route_p.add_argument(
        "--model", default="auto", help="virtual model or expert name (default auto)"
    )
    route_p.add_argument("--registry")
    route_p.add_argument("--redis-url")
    route_p.add_argument("--json", action="store_true", help="print the decision as JSON")
    route_p.set_defaults(func=_route)

    models_p = sub.add_parser("models", help="built-in tiny models")
    models_sub = models_p.add_subparsers(dest="models_command", required=True)
    prep = models_sub.add_parser(
        "prepare",
        help="convert the bundled GGUF models to HF folders; "
        "without names, build the static encoder table too",
    )
    prep.add_argument("names", nargs="*")
    prep.add_argument("--force", action="store_true")
    models_sub.add_parser("list")
    models_p.set_defaults(func=_models)

    # Subcommands with their own parsers: listed here for --help, dispatched in main().
    for name, help_text in _DELEGATED_HELP.items():
        sub.add_parser(name, add_help=False, help=help_text)
    return parser


_DELEGATED_HELP = {
    "profile": "measure each expert's competence per skill (quorum profile --help)",
    "eval-routing": "routing quality on outcome data (quorum eval-routing --help)",
    "fit-policy": "fit the routing policy the service serves (quorum fit-policy --help)",
    "train-classifier": "fit the skill taxonomy and classifier head from outcome data's categories "
    "(quorum train-classifier --help)",
}


def _delegated(name: str):
    """The `main(argv)` of a subcommand that owns its parser (imported only when used)."""
    if name == "profile":
        from skills.profile import main as profile_main

        return profile_main
    if name == "fit-policy":
        from skills.fit_policy import main as fit_main

        return fit_main
    if name == "train-classifier":
        from skills.taxonomy import main as taxonomy_main

        return taxonomy_main
    from skills.routing_eval import main as eval_main

    return eval_main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in _DELEGATED_HELP:
        return _delegated(argv[0])(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    try:
        return args.func(args)
    except QuorumError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
