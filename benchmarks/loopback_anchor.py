"""A scripted OpenAI-compatible anchor server on loopback: it answers every chat completion after a fixed latency,
using no CPU while it waits, with a synthesis that boxes the most common `\\boxed{}` answer among the responses in the
prompt. It measures the overlapped anchor (benchmarks/overlap_anchor.py) and plays the faulty server in the fault
tests (tests/test_anchor_faults.py).

    python benchmarks/loopback_anchor.py --port 8011 --control /tmp/anchor.json

`--control` names a JSON file read on every request, so a running test can change the server's behaviour:
`{"latency": 0.5, "status": 503, "stall": 30}` -- seconds before answering; an HTTP status to answer with instead of a
completion (e.g. 503); seconds to stall before answering (beyond a client's timeout). Missing keys: latency 0, no
status, no stall. Every request is appended to `<control>.log` (one line: time, outcome).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def synthesis(prompt: str) -> str:
    # the synthesis template's own `\boxed{answer}` placeholder is not a response's answer
    answers = [a for a in BOXED.findall(prompt) if a.strip() and a.strip().lower() not in ("answer", "...")]
    answer = Counter(answers).most_common(1)[0][0] if answers else "0"
    return f"The responses mostly agree. The final answer is \\boxed{{{answer}}}."


def make_handler(control: str | None, model: str):
    def settings() -> dict:
        if not control or not os.path.exists(control):
            return {}
        try:
            with open(control) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def log(outcome: str) -> None:
        if control:
            with open(control + ".log", "a") as f:
                f.write(f"{time.time():.3f} {outcome}\n")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802
            if self.path.rstrip("/").endswith("/models"):
                self._send(200, {"object": "list", "data": [{"id": model, "object": "model"}]})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            s = settings()
            if s.get("stall"):
                log("stall")
                time.sleep(float(s["stall"]))
            if s.get("status"):
                log(f"status {s['status']}")
                self._send(int(s["status"]), {"error": {"message": "scripted failure", "type": "server_error"}})
                return
            time.sleep(float(s.get("latency", 0.0)))
            prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
            text = synthesis(prompt)
            log("ok")
            self._send(200, {
                "id": "loopback", "object": "chat.completion", "model": body.get("model", model),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(text) // 4,
                          "total_tokens": (len(prompt) + len(text)) // 4},
            })

    return Handler


def serve(port: int, control: str | None = None, model: str = "loopback-anchor") -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(control, model))
    server.daemon_threads = True
    return server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control", default=None)
    parser.add_argument("--model", default="loopback-anchor")
    args = parser.parse_args()
    serve(args.port, args.control, args.model).serve_forever()


if __name__ == "__main__":
    main()
