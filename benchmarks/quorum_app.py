"""Quorum's HTTP app without Ray Serve: the ingress replica's app, served by uvicorn directly.

    python -m benchmarks.quorum_app --port 8000 --registry registry.yaml

Builds what `QuorumIngress` builds on its replica (the same constructor: registry, clients,
router, audit, feedback, metrics observer) and serves it with one uvicorn worker, so the overhead
benchmark can tell Quorum's own per-request cost from Ray Serve's (proxy and replica hops). Only
for registries of `openai`-backend experts (hosted experts need Ray).
"""

from __future__ import annotations

import argparse
import sys


def build_app(registry_path: str):
    from experts.registry import load_registry
    from serving.deployments import QuorumIngress

    registry = load_registry(registry_path)
    if any(e.backend != "openai" for e in registry.experts):
        raise SystemExit("quorum_app serves openai-backend experts only (hosted ones need Ray)")
    # The class under Serve's ingress wrapper: plain Python, constructed as the replica does.
    ingress = next(c for c in QuorumIngress.func_or_class.__mro__
                   if "__serve_build_asgi_app__" in c.__dict__)  # fmt: skip
    replica = ingress(registry.model_dump(mode="json"), {}, None, [])
    return replica.__serve_build_asgi_app__()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quorum_app")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--registry", required=True)
    args = parser.parse_args(argv)
    import uvicorn

    uvicorn.run(build_app(args.registry), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
