"""A minimal OpenAI-compatible chat server for tests: answers '<model> answers.' (SSE or JSON).

Started in a thread by `serve_stub()`; it counts requests per model so tests can see who answered.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    counts: Counter

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_POST(self) -> None:  # http.server calls it by this name
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        model = body.get("model", "?")
        self.counts[model] += 1
        text = f"{model} answers."
        usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        if not body.get("stream"):
            payload = {"id": "stub", "object": "chat.completion", "model": model,
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": text}}],
                       "usage": usage}  # fmt: skip
            raw = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)
            return
        chunks = [
            {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            {"choices": [], "usage": usage},
        ]
        raw = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
        raw += b"data: [DONE]\n\n"
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


def serve_stub() -> tuple[ThreadingHTTPServer, Counter]:
    """Start the stub on a free port; returns the server (`server_address[1]` is the port)."""
    counts: Counter = Counter()
    handler = type("Handler", (_Handler,), {"counts": counts})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, counts
