"""Hostile input against the real app over real HTTP: each row of `HOSTILE` is one attack, answered with a short
JSON refusal (or a closed connection) and never a 5xx; then streams that fail midway, the compute budget,
and the Spaces' own limits (bounded queue, uploads off, analytics off, the benchmark's context cap).

The servers run in this process (uvicorn in a thread, with the same `server_config` as the command line) so
each test can set small limits and use test doubles for faults; the model is the published tiny ONNX LM.
"""

from __future__ import annotations

import copy
import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import httpx
import numpy as np
import pytest

from pocketlm.inference.onnx_lm import SamplingParams, choose_next_tokens
from pocketlm.serving.admission import Limits
from pocketlm.serving.schemas import MAX_BATCH_PROMPTS, MAX_PROMPT_CHARS

from loopback_server import server_sent_events, serving

MARK = "HOSTILE"
TEST_LIMITS = Limits(max_body_bytes=64 * 1024, read_timeout_s=0.5)




@pytest.fixture(scope="module")
def lm(tiny_lm_onnx_repo):
    from pocketlm.hub import resolve
    from pocketlm.serving.models import load_lm

    return load_lm(resolve(tiny_lm_onnx_repo))


@pytest.fixture(scope="module")
def base_url(lm):
    from pocketlm.serving.app import create_app
    from pocketlm.serving.models import ServingModels

    with serving(create_app(ServingModels(lm=lm), TEST_LIMITS), TEST_LIMITS) as url:
        yield url


# -- the table ------------------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int | None
    """None: the server closed the connection without answering."""
    headers: dict
    body: bytes
    seconds: float


def post(path: str, body=None, *, content: bytes | None = None, **kwargs):
    """A request sent with httpx (`body` as JSON, or raw `content`)."""

    def send(url: str) -> Reply:
        started = time.perf_counter()
        headers = {"content-type": "application/json"} if content is not None else None
        response = httpx.post(url + path, json=body, content=content, headers=headers, timeout=30, **kwargs)
        return Reply(response.status_code, dict(response.headers), response.content, time.perf_counter() - started)

    return send


def raw(head: str, body: bytes = b"") -> Callable[[str], Reply]:
    """Bytes written on a socket as they are (a lying Content-Length, headers that never end...), then
    everything the server sends until it closes the connection."""

    def send(url: str) -> Reply:
        host, port = url.removeprefix("http://").split(":")
        started = time.perf_counter()
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(head.replace("\n", "\r\n").encode() + body)
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        seconds = time.perf_counter() - started
        if not received:
            return Reply(None, {}, b"", seconds)
        head_bytes, _, payload = received.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        return Reply(int(lines[0].split()[1]), headers, payload, seconds)

    return send


def chunks(total: int, size: int = 16 * 1024) -> Iterator[bytes]:
    yield b'{"prompt": "'
    for _ in range(total // size):
        yield MARK.encode() * (size // len(MARK))
    yield b'"}'


POST_HEAD = "POST /generate HTTP/1.1\nHost: 127.0.0.1\nContent-Type: application/json\n"
NESTED = b"[" * 30_000 + b"]" * 30_000
BIG_PROMPT = MARK * (50_000 // len(MARK))

# name -> (request, expected status (None: connection closed), the field a 422 must name)
HOSTILE = {
    "declared 100 MB body": (raw(POST_HEAD + "Content-Length: 100000000\n\n", b'{"prompt": "' + MARK.encode() * 100), 413, None),
    "body over the cap": (post("/generate", {"prompt": MARK * 20_000}), 413, None),
    "chunked body over the cap": (post("/generate", content=chunks(1024 * 1024)), 413, None),
    "headers that never end": (raw(POST_HEAD + "X-Slow: 1\n"), None, None),
    "body that never comes": (raw(POST_HEAD + "Content-Length: 100\n\n", b'{"prompt": '), 408, None),
    "huge prompt is not echoed whole": (post("/generate", {"prompt": BIG_PROMPT}), 422, "prompt"),
    "huge unknown field is not echoed whole": (post("/generate", {"max_new_tokens": 8, MARK: BIG_PROMPT}), 422, "prompt"),
    "deeply nested JSON": (post("/generate", content=NESTED), 422, "body"),
    "temperature 1e-310": (post("/generate", {"prompt": "Hi", "do_sample": True, "temperature": 1e-310}), 422, "temperature"),
    "temperature NaN": (post("/generate", content=b'{"prompt": "Hi", "do_sample": true, "temperature": NaN}'), 422, "temperature"),
    "temperature Infinity": (post("/generate", content=b'{"prompt": "Hi", "do_sample": true, "temperature": Infinity}'), 422, "temperature"),
    "temperature -1": (post("/generate", {"prompt": "Hi", "do_sample": True, "temperature": -1}), 422, "temperature"),
    "top_k 0": (post("/generate", {"prompt": "Hi", "do_sample": True, "top_k": 0}), 422, "top_k"),
    "top_k 10**30": (post("/generate", {"prompt": "Hi", "do_sample": True, "top_k": 10**30}), 422, "top_k"),
    "max_new_tokens 10**30": (post("/generate", {"prompt": "Hi", "max_new_tokens": 10**30}), 422, "max_new_tokens"),
    "seed -1": (post("/generate", {"prompt": "Hi", "do_sample": True, "seed": -1}), 422, "seed"),
    "batch over the token budget": (
        post("/generate/batch", {"prompts": ["Hi"] * MAX_BATCH_PROMPTS, "max_new_tokens": 256, "ignore_eos": True}), 422, "prompts"),
    "coldest valid sampling": (
        post("/generate", {"prompt": "Hi", "do_sample": True, "temperature": 0.01, "top_k": 1000, "max_new_tokens": 16}), 200, None),
    "hottest valid sampling": (
        post("/generate", {"prompt": "Hi", "do_sample": True, "temperature": 5.0, "top_k": 1000, "max_new_tokens": 16}), 200, None),
    "largest batch within the budget": (
        post("/generate/batch", {"prompts": ["The city"] * MAX_BATCH_PROMPTS, "max_new_tokens": 128, "ignore_eos": True,
                                 "do_sample": True, "temperature": 0.01}), 200, None),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_request_gets_a_short_answer_and_never_a_5xx(base_url, case):
    send, expected, field = HOSTILE[case]
    reply = send(base_url)
    assert reply.status == expected, (reply.status, reply.body[:500])
    assert reply.seconds < 5  # the timeouts are 0.5 s here: nothing waits for the client
    if reply.status is None:
        return
    assert reply.status < 500
    assert reply.headers["content-type"] == "application/json"
    assert reply.status == 200 or len(reply.body) < 4000  # a refusal never echoes a large input back
    body = json.loads(reply.body)
    if reply.status in (408, 413):
        assert MARK not in body["detail"] and len(body["detail"]) < 100
    if reply.status == 422:
        assert any(field in map(str, error["loc"]) for error in body["detail"]), body
    if reply.status == 200:
        generations = body.get("generations", [body])
        assert all(g["finish_reason"] in ("eos", "length") and g["generated_tokens"] >= 1 for g in generations)


def test_every_valid_request_fits_the_default_body_cap():
    """The largest valid body (32 prompts of 4,000 characters that JSON escapes as \\uXXXX) stays under the cap."""
    body = json.dumps({"prompts": ["é" * MAX_PROMPT_CHARS] * MAX_BATCH_PROMPTS, "max_new_tokens": 128}).encode()
    assert len(body) < Limits().max_body_bytes


@pytest.mark.parametrize("temperature", [1e-310, 1e-5, 0.01, 1.0, 5.0, 1e300])
def test_the_sampler_never_makes_nan(temperature):
    """Extreme logits and temperatures (below the API's bounds too) still pick a valid token; a tiny temperature
    is greedy, and non-finite logits are never picked."""
    logits = np.array([[3e38, 2e38, -3e38, 0.0, np.nan], [1.0, np.inf, -np.inf, 2.0, 0.5],
                       [-np.inf] * 5, [0.0, 1e-3, 2e-3, 3e-3, 4e-3]], dtype=np.float32)
    params = SamplingParams(do_sample=True, temperature=temperature, top_k=5)
    rng = np.random.default_rng(0)
    with np.errstate(invalid="raise", divide="raise"):  # a NaN made on the way fails the test
        picks = [choose_next_tokens(logits, params, rng) for _ in range(20)]
    for row in picks:
        assert row.shape == (4,) and ((0 <= row) & (row < 5)).all()
        assert row[1] in (0, 3, 4)  # +inf, -inf: never picked
    if temperature <= 1e-5:
        assert all(row[0] == 0 and row[3] == 4 for row in picks)


# -- streams, faults and the compute budget -------------------------------------------------------------------


class FaultySession:
    """Test double for the LM's ONNX Runtime session: every run first sleeps `delay_s`, and a run whose
    sequence reaches `fail_at` positions raises — so the real decoding loop around it meets the fault."""

    def __init__(self, real, fail_at: int | None = None, delay_s: float = 0.0):
        self._real, self.fail_at, self.delay_s = real, fail_at, delay_s

    def __getattr__(self, name):
        return getattr(self._real, name)

    def run(self, output_names, feed):
        time.sleep(self.delay_s)
        if self.fail_at is not None and feed["attention_mask"].shape[1] >= self.fail_at:
            raise RuntimeError("injected fault in the model call")
        return self._real.run(output_names, feed)


def faulty(served, **kwargs):
    """`served` (the real loaded LM) with a `FaultySession` in its runtime."""
    runtime = copy.copy(served.runtime)
    runtime.session = FaultySession(served.runtime.session, **kwargs)
    return replace(served, runtime=runtime)


def sse_events(response: httpx.Response) -> list[tuple[str, str]]:
    return [(name, data) for name, data, _ in server_sent_events(response)]


@pytest.fixture(scope="module")
def faulty_url(lm):
    from pocketlm.serving.app import create_app
    from pocketlm.serving.models import ServingModels

    with serving(create_app(ServingModels(lm=faulty(lm, fail_at=8)), TEST_LIMITS), TEST_LIMITS) as url:
        yield url


def test_a_stream_that_fails_midway_ends_with_an_error_event(faulty_url):
    with httpx.stream("POST", faulty_url + "/generate/stream", json={"prompt": "Hi", "max_new_tokens": 20, "ignore_eos": True},
                      timeout=30) as response:
        assert response.status_code == 200
        events = sse_events(response)
    names = [name for name, _ in events]
    assert names[-1] == "error" and set(names[:-1]) == {"message"}, names
    assert f"generation failed after {len(names) - 1} tokens" in json.loads(events[-1][1])["detail"]
    assert httpx.get(faulty_url + "/health").json()["in_flight"] == 0  # the ticket came back


def test_a_model_failure_is_a_json_500_not_a_traceback(faulty_url):
    response = httpx.post(faulty_url + "/generate", json={"prompt": "Hi"}, timeout=30)
    assert response.status_code == 500 and response.headers["content-type"] == "application/json"
    assert response.json() == {"detail": "internal error (RuntimeError); see the server log"}


def test_the_compute_budget_ends_a_generation_early(lm):
    from pocketlm.serving.app import create_app
    from pocketlm.serving.models import ServingModels

    limits = replace(TEST_LIMITS, max_compute_s=0.2)
    slow = faulty(lm, delay_s=0.05)
    with serving(create_app(ServingModels(lm=slow), limits), limits) as url:
        started = time.perf_counter()
        body = httpx.post(url + "/generate", json={"prompt": "Hi", "max_new_tokens": 200, "ignore_eos": True}, timeout=30).json()
        assert time.perf_counter() - started < 2  # 200 steps would take 10 s
        assert body["finish_reason"] == "time_limit" and 2 <= body["generated_tokens"] < 20
        with httpx.stream("POST", url + "/generate/stream", json={"prompt": "Hi", "max_new_tokens": 200, "ignore_eos": True},
                          timeout=30) as response:
            events = sse_events(response)
        name, data = events[-1]
        assert name == "end" and json.loads(data)["finish_reason"] == "time_limit"


# -- the Spaces suite -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def suite_url(lm):
    from pocketlm.serving.models import ServingModels
    from pocketlm.spaces.onnx_benchmark import QABackends
    from pocketlm.spaces.suite import create_suite_app

    limits = replace(TEST_LIMITS, max_waiting=1)
    slow = faulty(lm, fail_at=8, delay_s=0.3)
    # the benchmark tab refuses a long context before it loads anything: its runtimes are never built here
    app = create_suite_app(ServingModels(lm=slow), QABackends("unused/pytorch", "unused/onnx"), limits=limits)
    with serving(app, limits) as url:
        yield url


def gradio_call(url: str, api_name: str, data: list) -> tuple[str, str]:
    """Gradio's HTTP API: queue the event, then read its event stream to the last event (name, data)."""
    queued = httpx.post(f"{url}/gradio_api/call/{api_name}", json={"data": data}, timeout=30)
    assert queued.status_code == 200, queued.text
    with httpx.stream("GET", f"{url}/gradio_api/call/{api_name}/{queued.json()['event_id']}", timeout=30) as response:
        return sse_events(response)[-1]


def test_the_suite_stream_ends_with_an_error_event_when_the_model_fails(suite_url):
    name, data = gradio_call(suite_url, "generate_text", ["Hi", 50, 0.8, 20, 0])
    assert name == "error" and "generation failed after" in data and "RuntimeError" in data


def test_the_benchmark_tab_caps_the_context(suite_url):
    name, data = gradio_call(suite_url, "compare_runtimes", ["Who?", "word " * 1000, 5])
    assert name == "error" and "at most 2000 characters" in data


def test_a_full_gradio_queue_refuses_with_a_readable_message(suite_url):
    """max_waiting 1: one event runs (~1 s of slow steps), one waits, the next ones are refused at once."""
    request = {"data": ["Hi", 50, 0.8, 3, 0]}
    with httpx.Client(base_url=suite_url, timeout=30) as http:
        replies = [http.post("/gradio_api/call/generate_text", json=request)]
        # the first event must have left the queue for a worker before the others arrive: on a slow host
        # Gradio's loop may not have picked it up yet, and it would still count as the one waiting event
        deadline = time.monotonic() + 10
        while http.get("/gradio_api/queue/status").json()["queue_size"] and time.monotonic() < deadline:
            time.sleep(0.01)
        replies += [http.post("/gradio_api/call/generate_text", json=request) for _ in range(3)]
    statuses = [reply.status_code for reply in replies]
    assert statuses[:2] == [200, 200] and 503 in statuses[2:], statuses
    refused = next(reply for reply in replies if reply.status_code == 503)
    assert "Queue is full" in refused.json()["detail"]


def test_uploads_are_refused(suite_url):
    response = httpx.post(suite_url + "/gradio_api/upload", files={"files": ("a.txt", b"some bytes")}, timeout=30)
    assert response.status_code == 413


def test_uploads_over_the_body_cap_are_refused_before_they_are_read(suite_url):
    response = httpx.post(suite_url + "/gradio_api/upload", files={"files": ("a.bin", b"x" * (1024 * 1024))}, timeout=30)
    assert response.status_code == 413


def test_analytics_are_off_in_code(monkeypatch):
    import importlib

    import pocketlm.spaces
    from pocketlm.spaces.common import page

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "True")
    assert page("t").analytics_enabled is False  # whatever the environment says
    monkeypatch.delenv("GRADIO_ANALYTICS_ENABLED")
    importlib.reload(pocketlm.spaces)  # a plain `python spaces/suite/app.py`: nothing set
    import os

    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
