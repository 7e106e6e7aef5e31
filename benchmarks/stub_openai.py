"""A fast stub OpenAI-compatible backend for gateway benchmarks: raw asyncio HTTP/1.1, keep-alive.

    python -m benchmarks.stub_openai PORT

`POST .../chat/completions` answers at once with a fixed 16-token completion, as one JSON body
or (with `"stream": true`) as SSE chunks ending in a usage chunk and `[DONE]`. `GET .../models`
lists one model. It does as little work as an HTTP server can, so that what a gateway in front of
it adds is what a benchmark measures.
"""

from __future__ import annotations

import asyncio
import json
import sys

from benchmarks.http_load import read_message

WORDS = ["stub"] * 16
TEXT = " ".join(WORDS)
USAGE = {"prompt_tokens": 0, "completion_tokens": len(WORDS), "total_tokens": len(WORDS)}


def _completion(model: str) -> bytes:
    return json.dumps({
        "id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "finish_reason": "length",
                     "message": {"role": "assistant", "content": TEXT}}],
        "usage": USAGE,
    }).encode()  # fmt: skip


def _sse(model: str) -> bytes:
    def chunk(delta: dict, finish: str | None, usage: dict | None = None) -> str:
        body = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 0,
                "model": model, "choices": [{"index": 0, "delta": delta,
                                              "finish_reason": finish}]}  # fmt: skip
        if usage is not None:
            body |= {"choices": [], "usage": usage}
        return f"data: {json.dumps(body)}\n\n"

    parts = [chunk({"role": "assistant", "content": ""}, None)]
    parts += [chunk({"content": w if i == 0 else " " + w}, None) for i, w in enumerate(WORDS)]
    parts += [chunk({}, "length"), chunk({}, None, USAGE), "data: [DONE]\n\n"]
    return "".join(parts).encode()


_CACHE: dict[tuple[str, bool], bytes] = {}


def _response(status: str, body: bytes, content_type: str) -> bytes:
    head = (f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n"
            f"content-length: {len(body)}\r\nconnection: keep-alive\r\n\r\n")  # fmt: skip
    return head.encode() + body


def answer(method: str, path: str, body: bytes) -> bytes:
    if method == "GET" and path.endswith("/models"):
        data = {"object": "list", "data": [{"id": "stub", "object": "model", "owned_by": "stub"}]}
        return _response("200 OK", json.dumps(data).encode(), "application/json")
    if method != "POST" or not path.endswith("/chat/completions"):
        return _response(
            "404 Not Found", b'{"error": {"message": "not found"}}', "application/json"
        )
    try:
        request = json.loads(body)
    except ValueError:
        return _response(
            "400 Bad Request", b'{"error": {"message": "bad json"}}', "application/json"
        )
    key = (str(request.get("model", "stub")), bool(request.get("stream")))
    if key not in _CACHE:
        if key[1]:
            _CACHE[key] = _response("200 OK", _sse(key[0]), "text/event-stream")
        else:
            _CACHE[key] = _response("200 OK", _completion(key[0]), "application/json")
    return _CACHE[key]


async def _serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            start, body = await read_message(reader)
            method, path, _ = start.split(" ", 2)
            writer.write(answer(method, path, body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def serve(port: int, host: str = "127.0.0.1") -> None:
    server = await asyncio.start_server(_serve_connection, host, port, backlog=1024)
    print(f"stub OpenAI backend on http://{host}:{port}/v1", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(int(argv[0]) if argv else 8101))
    return 0


if __name__ == "__main__":
    sys.exit(main())
