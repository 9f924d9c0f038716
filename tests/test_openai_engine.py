"""`OpenAIEngine` against real HTTP servers on loopback: `transformers serve` on the embedded model (a real
OpenAI-compatible server), and small scripted `http.server` servers where a failure mode (503s, 400s, slow
responses) has to be produced on demand."""

from __future__ import annotations

import json
import pickle
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cat_trl.engines import SamplingSettings
from cat_trl.engines.openai_engine import (
    EngineError,
    EngineUnavailableError,
    OpenAIEngine,
)
from cat_trl.rubrics import Judge, JudgeItem

GREEDY = SamplingSettings(max_new_tokens=12, temperature=0.0)


def _chat(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_generate_against_transformers_serve(served_model):
    base_url, model = served_model
    engine = OpenAIEngine(base_url, model, max_concurrency=3)
    assert isinstance(engine.check(), list)  # reachable (transformers serve's /models may fail: that is fine)
    outs = engine.generate([_chat("Say hello."), _chat("What is 2 + 2?"), _chat("Name a colour.")], GREEDY)
    assert len(outs) == 3 and all(o.text.strip() for o in outs)
    assert all(o.prompt_tokens > 0 and 0 < o.completion_tokens <= 12 for o in outs)
    assert engine.stats.calls == 1 and engine.stats.sequences == 3
    assert engine.name == model  # recorded with every score / in the run config


def test_response_cache_in_memory_and_on_disk(served_model, tmp_path):
    base_url, model = served_model
    cache = tmp_path / "judge_cache.jsonl"
    engine = OpenAIEngine(base_url, model, cache_path=str(cache))
    first = engine.generate([_chat("Count to three.")], GREEDY)[0].text
    requests = engine.stats.extra["http_requests"]
    again = engine.generate([_chat("Count to three.")], GREEDY)[0].text
    assert again == first
    assert engine.stats.extra["http_requests"] == requests and engine.stats.extra["cache_hits"] == 1
    # A different request (other seed) is not served from the cache.
    engine.generate([_chat("Count to three.")], SamplingSettings(max_new_tokens=12, temperature=0.0, seed=3))
    assert engine.stats.extra["http_requests"] == requests + 1
    # A new engine (a resumed run) reads the persisted cache: no HTTP at all, even with the server unreachable.
    offline = OpenAIEngine("http://127.0.0.1:9/v1", model, cache_path=str(cache), max_retries=0)
    offline.base_url = engine.base_url  # same key space as the original server
    assert offline.generate([_chat("Count to three.")], GREEDY)[0].text == first
    assert offline.stats.extra["http_requests"] == 0


def test_logprobs_unsupported_by_server_is_reported(served_model):
    base_url, model = served_model
    engine = OpenAIEngine(base_url, model, cache=False)
    with pytest.raises(EngineError, match="top_logprobs"):
        engine.next_token_logprobs([_chat("Is the sky blue? Answer yes or no.")], ("yes", "no"))


def test_judge_generate_mode_over_http(served_model):
    base_url, model = served_model
    judge = Judge(OpenAIEngine(base_url, model), "generate", max_new_tokens=4)
    items = [JudgeItem(_chat("Is water wet?"), "Yes, water is wet.", c) for c in ("Answers the question.", "Is rude.")]
    verdicts = judge.judge(items)
    assert len(verdicts) == 2
    for v in verdicts:
        assert v.raw is not None and v.score in (0.0, 1.0) and v.met == (v.score == 1.0)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on exit: nothing listens there


def test_unreachable_server_fails_with_the_url():
    port = _closed_port()
    engine = OpenAIEngine(f"http://127.0.0.1:{port}", "m", max_retries=2, timeout=2)
    start = time.perf_counter()
    with pytest.raises(EngineUnavailableError, match=f"127.0.0.1:{port}.*3 attempts"):
        engine.generate([_chat("hi")], GREEDY)
    assert time.perf_counter() - start < 10
    assert engine.stats.extra["retries"] == 2
    with pytest.raises(EngineUnavailableError, match="unreachable"):
        engine.check()


class _Scripted(BaseHTTPRequestHandler):
    """Answers /v1/chat/completions from a per-server script of status codes; records concurrency."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
            status = srv.script.pop(0) if srv.script else 200
            srv.bodies.append(body)
        time.sleep(srv.delay)
        with srv.lock:
            srv.in_flight -= 1
        if status != 200:
            payload = json.dumps({"error": f"scripted {status}"}).encode()
        else:
            text = "echo: " + body["messages"][-1]["content"]
            payload = json.dumps({
                "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3},
            }).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if status == 429:
            self.send_header("Retry-After", "0")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def scripted():
    servers = []

    def start(script=(), delay=0.0):
        srv = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
        srv.script, srv.delay, srv.lock = list(script), delay, threading.Lock()
        srv.in_flight = srv.max_in_flight = 0
        srv.bodies = []
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv, f"http://127.0.0.1:{srv.server_address[1]}/v1"

    yield start
    for srv in servers:
        srv.shutdown()


def test_retries_with_backoff_on_transient_errors(scripted):
    srv, url = scripted(script=[503, 429, 200])
    engine = OpenAIEngine(url, "m", max_retries=3, cache=False)
    start = time.perf_counter()
    assert engine.generate([_chat("x")], GREEDY)[0].text == "echo: x"
    assert engine.stats.extra["retries"] == 2
    assert time.perf_counter() - start >= 0.05  # slept before the first retry (Retry-After: 0 for the 429)


def test_client_errors_are_not_retried(scripted):
    srv, url = scripted(script=[400])
    engine = OpenAIEngine(url, "m", max_retries=3)
    with pytest.raises(EngineError, match="HTTP 400"):
        engine.generate([_chat("x")], GREEDY)
    assert engine.stats.extra["retries"] == 0


def test_concurrency_cap_and_request_body(scripted):
    srv, url = scripted(delay=0.2)
    engine = OpenAIEngine(url, "served-name", max_concurrency=2, cache=False)
    sampling = SamplingSettings(max_new_tokens=7, temperature=0.5, top_k=20, seed=1, stop=("END",))
    outs = engine.generate([_chat(str(i)) for i in range(6)], sampling, {"enable_thinking": False})
    assert [o.text for o in outs] == [f"echo: {i}" for i in range(6)]  # order kept
    assert srv.max_in_flight == 2
    body = srv.bodies[0]
    assert body["model"] == "served-name" and body["max_tokens"] == 7 and body["top_k"] == 20
    assert body["seed"] == 1 and body["stop"] == ["END"] and body["chat_template_kwargs"] == {"enable_thinking": False}
    assert "top_p" not in body and "min_p" not in body  # defaults are not sent (hosted APIs reject unknown fields)


def test_engine_pickles_without_its_client(scripted):
    srv, url = scripted()
    engine = OpenAIEngine(url, "m")
    engine.generate([_chat("a")], GREEDY)
    clone = pickle.loads(pickle.dumps(engine))
    assert clone.generate([_chat("b")], GREEDY)[0].text == "echo: b"


def test_bad_arguments_fail_fast():
    with pytest.raises(ValueError, match="base_url"):
        OpenAIEngine("", "m")
    with pytest.raises(ValueError, match="model"):
        OpenAIEngine("http://x", "")


class _ErrorBody(_Scripted):
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        payload = b'{"error": "overloaded"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def test_unusable_bodies_are_not_cached(tmp_path):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _ErrorBody)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        cache = tmp_path / "cache.jsonl"
        engine = OpenAIEngine(f"http://127.0.0.1:{srv.server_address[1]}/v1", "m", cache_path=str(cache))
        with pytest.raises(EngineError, match="Malformed"):
            engine.generate([_chat("x")], GREEDY)
        with pytest.raises(EngineError, match="top_logprobs"):
            engine.next_token_logprobs([_chat("x")], ("yes", "no"))
        assert not cache.exists() or cache.read_text() == ""
    finally:
        srv.shutdown()


def test_persistent_rate_limit_says_so(scripted):
    srv, url = scripted(script=[429, 429])
    engine = OpenAIEngine(url, "m", max_retries=1)
    with pytest.raises(EngineUnavailableError, match="rate-limited"):
        engine.generate([_chat("x")], GREEDY)


class _Trickle(BaseHTTPRequestHandler):
    """Sends headers and then one byte of a never-ending body every 0.1 s (bounded: it stops after 30 s)."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "1000000")
        self.end_headers()
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline and not self.server.stop.is_set():
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:  # the client gave up
            pass


def test_a_server_trickling_bytes_cannot_hold_a_call_past_its_deadline():
    """httpx's timeout bounds each wait for bytes; the engine bounds the whole attempt (timeout + one read gap)."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    srv.stop = threading.Event()
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        engine = OpenAIEngine(f"http://127.0.0.1:{srv.server_address[1]}/v1", "m", timeout=1.0, max_retries=1,
                              cache=False)
        start = time.perf_counter()
        with pytest.raises(EngineUnavailableError, match="within 1.0 s"):
            engine.generate([_chat("x")], GREEDY)
        elapsed = time.perf_counter() - start
        assert elapsed < 5, elapsed  # 2 attempts x ~1.1 s; without the deadline: 30 s (the server's own bound)
        assert engine.stats.extra["http_requests"] == 2
    finally:
        srv.stop.set()
        srv.shutdown()
