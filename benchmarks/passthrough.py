"""A plain Ray Serve passthrough: the floor under any gateway on Ray Serve.

    python -m benchmarks.passthrough --port 8000 --upstream http://127.0.0.1:8101/v1 [--naive]

One FastAPI deployment whose `POST /v1/chat/completions` forwards the body to `--upstream` with
one shared `httpx.AsyncClient` and returns the answer as it came. It runs with the same Serve
options as Quorum's ingress (`serving.serve_options`), so comparing the two measures what Quorum
adds; `--naive` runs it with Ray Serve's defaults instead (what the issue's first table had).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# At module level: FastAPI resolves the handler's (string) annotations in this module's globals.
from fastapi import FastAPI, Request, Response


def build(upstream: str, naive: bool):
    import httpx
    from ray import serve

    from serving.serve_options import ingress_options

    api = FastAPI()
    options = {"ray_actor_options": {"num_cpus": 0}} if naive else ingress_options()

    @serve.deployment(**options)
    @serve.ingress(api)
    class Passthrough:
        def __init__(self, upstream: str) -> None:
            self.url = upstream.rstrip("/") + "/chat/completions"
            limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
            self.client = httpx.AsyncClient(timeout=60, limits=limits)

        @api.post("/v1/chat/completions")
        async def chat(self, request: Request) -> Response:
            answer = await self.client.post(
                self.url, content=await request.body(),
                headers={"content-type": "application/json"},
            )  # fmt: skip
            return Response(answer.content, answer.status_code,
                            media_type=answer.headers.get("content-type"))  # fmt: skip

    return Passthrough.bind(upstream)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.passthrough")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--naive", action="store_true", help="Ray Serve's default options")
    args = parser.parse_args(argv)
    from serving.serve_options import apply_serve_env

    if not args.naive:
        apply_serve_env()  # as `quorum serve` does: before Ray is imported or started
    import ray
    from ray import serve

    ray.init(num_cpus=max(os.cpu_count() or 1, 2), include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(build(args.upstream, args.naive), name="passthrough", route_prefix="/")
    print("passthrough is up", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
