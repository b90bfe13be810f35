"""Continuous batching over real HTTP: requests join one decode batch at step boundaries and leave it when done.

The app runs in this process (uvicorn in a thread, the command line's settings) so a test can read its
scheduler's counters and slow the model down with a test double; the model is the published tiny ONNX LM
(fp32, the graph the server serves by default).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace

import httpx
import numpy as np
import pytest

from pocketlm.inference.batching import corpus_prompts
from pocketlm.inference.onnx_lm import KVState, SamplingParams
from pocketlm.serving.admission import Limits

from loopback_server import server_sent_events, slowed
from loopback_server import serving as serve_on_loopback


@contextmanager
def serving(served_lm, limits: Limits = Limits(), scheduler: str = "continuous", served_qa=None):
    """The REST app around `served_lm` (and `served_qa`) on a free loopback port; yields (base URL, app)."""
    from pocketlm.serving.app import create_app
    from pocketlm.serving.models import ServingModels

    app = create_app(ServingModels(lm=served_lm, qa=served_qa), limits, scheduler)
    with serve_on_loopback(app, limits) as url:
        yield url, app


class SlowAnswers:
    """Test double for the QA runtime: each answer first sleeps `delay_s` and notes itself in `log`."""

    def __init__(self, real, delay_s: float, log: list):
        self._real, self.delay_s, self.log = real, delay_s, log

    def __getattr__(self, name):
        return getattr(self._real, name)

    def answer(self, question, context):
        self.log.append("qa")
        time.sleep(self.delay_s)
        return self._real.answer(question, context)


@pytest.fixture(scope="module")
def served(tiny_lm_onnx_repo):
    from pocketlm.hub import resolve
    from pocketlm.serving.models import load_lm

    return load_lm(resolve(tiny_lm_onnx_repo))


@pytest.fixture(scope="module")
def server(served):
    with serving(served) as running:
        yield running


def sse(response: httpx.Response) -> list[tuple[str, dict]]:
    return [(name, json.loads(data)) for name, data, _ in server_sent_events(response)]


def call(base_url: str, route: str, body: dict) -> list[int] | str:
    """What a request got: the text of `/generate`, the token ids of `/generate/stream` (which must end with `end`)."""
    if route == "/generate":
        return httpx.post(base_url + route, json=body, timeout=60).json()["text"]
    with httpx.stream("POST", base_url + route, json=body, timeout=60) as response:
        events = sse(response)
    assert events[-1][0] == "end", events[-1]
    return [data["token_id"] for _, data in events[:-1]]


def test_staggered_requests_get_the_greedy_tokens_they_get_alone(served):
    """14 requests, prompts of 3–60 tokens and 1–40 new tokens, arriving 0–130 ms apart on both routes: each one
    joins the running batch and gets, token for token, what the single-request path gives it alone.

    Each graph call is slowed by 5 ms so that generations overlap on any host (the tiny model alone can finish a
    request before the next one arrives on a fast machine)."""
    with serving(slowed(served, 0.005)) as (base_url, app):
        _check_staggered_requests(served, base_url, app)


def test_the_static_int8_graph_is_batched_by_default_and_gives_the_tokens_it_gives_alone(tiny_lm_onnx_repo):
    """`--lm-precision int8-static` gets the continuous scheduler (its activation scales are fixed, unlike the
    dynamic int8 graph's), and the staggered requests still get exactly their single-request tokens."""
    from pocketlm.hub import resolve
    from pocketlm.serving.models import load_lm

    static = load_lm(resolve(tiny_lm_onnx_repo), "int8-static")
    assert static.file.name == "model_static_quantized.onnx"
    with serving(slowed(static, 0.005), scheduler=None) as (base_url, app):
        assert app.state.scheduler_kind == "continuous"
        _check_staggered_requests(static, base_url, app)


def _check_staggered_requests(served, base_url, app):
    lm = served.runtime
    texts = [lm.decode(ids) for ids in corpus_prompts(lm, 14, [3 + 4 * i for i in range(14)])]
    lengths = [1 + (7 * i) % 40 for i in range(14)]
    alone = [lm.generate_ids([lm.encode(text)], SamplingParams(max_new_tokens=n, stop_at_eos=i % 3 != 0))[0]
             for i, (text, n) in enumerate(zip(texts, lengths))]
    assert len({t for out in alone for t in out}) > 20, "outputs too uniform to reveal a batching bug"
    scheduler = app.state.scheduler
    before = (scheduler.steps, scheduler.row_steps)

    def request(i: int):
        time.sleep(0.01 * i)  # staggered: later requests join a batch that is already decoding
        body = {"prompt": texts[i], "max_new_tokens": lengths[i], "ignore_eos": i % 3 == 0}
        return call(base_url, "/generate/stream" if i % 2 else "/generate", body)

    with ThreadPoolExecutor(14) as pool:
        got = list(pool.map(request, range(14)))
    for i, (tokens, expected) in enumerate(zip(got, alone)):
        assert tokens == (expected if i % 2 else lm.decode(expected)), f"request {i}"
    steps, row_steps = scheduler.steps - before[0], scheduler.row_steps - before[1]
    assert scheduler.peak_rows >= 4 and row_steps > 1.5 * steps  # they really shared steps
    health = httpx.get(base_url + "/health").json()
    assert health["scheduler"] == "continuous" and health["in_flight"] == 0 and scheduler.rows == 0


def test_seeded_sampling_in_a_batch_is_what_it_is_alone(served, server):
    base_url, _ = server
    lm = served.runtime
    body = {"prompt": "The history of the city", "max_new_tokens": 16, "do_sample": True, "temperature": 0.9,
            "top_k": 40, "seed": 7, "ignore_eos": True}
    params = SamplingParams(max_new_tokens=16, do_sample=True, temperature=0.9, top_k=40, seed=7, stop_at_eos=False)
    expected = lm.decode(lm.generate_ids([lm.encode(body["prompt"])], params)[0])
    others = [{**body, "prompt": f"In {1900 + i} the", "seed": i} for i in range(5)]
    with ThreadPoolExecutor(6) as pool:
        noise = [pool.submit(httpx.post, base_url + "/generate", json=o, timeout=60) for o in others]
        mine = pool.submit(httpx.post, base_url + "/generate", json=body, timeout=60)
        assert all(f.result().status_code == 200 for f in noise)
    assert mine.result().json()["text"] == expected


def wait_until(condition, timeout_s: float = 5.0) -> float:
    started = time.perf_counter()
    while not condition():
        assert time.perf_counter() - started < timeout_s, "condition not met in time"
        time.sleep(0.01)
    return time.perf_counter() - started


def test_a_client_that_hangs_up_frees_its_row_at_once(served):
    """A stream closed after two tokens, and a /generate whose client gives up, leave the batch within a step or
    two (each step here takes 50 ms; the generations would take 10 s)."""
    with serving(slowed(served, 0.05)) as (base_url, app):
        scheduler = app.state.scheduler
        long_request = {"prompt": "Hi", "max_new_tokens": 200, "ignore_eos": True}
        with httpx.stream("POST", base_url + "/generate/stream", json=long_request, timeout=60) as response:
            lines = response.iter_lines()
            first = [next(lines) for _ in range(4)]
            assert sum(line.startswith("data: ") for line in first) == 2, first
            assert scheduler.rows == 1
        assert wait_until(lambda: scheduler.rows == 0 and app.state.admission.in_flight == 0) < 1.0
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(base_url + "/generate", json=long_request, timeout=0.5)
        assert wait_until(lambda: scheduler.rows == 0 and app.state.admission.in_flight == 0) < 1.0


def test_overload_is_still_refused_with_retry_after(served):
    """Capacity 3 (one active slot + two waiting) with a batch of one row: of 6 simultaneous requests 3 are refused
    at once with 503 + Retry-After; of the 3 admitted, the ones that wait for a row longer than max_wait_s get 503."""
    limits = Limits(max_active=1, max_batch=1, max_waiting=2, max_wait_s=0.4)
    with serving(slowed(served, 0.02), limits) as (base_url, app):
        body = {"prompt": "Hi", "max_new_tokens": 40, "ignore_eos": True}  # ~0.8 s alone

        def post(http: httpx.Client):
            started = time.perf_counter()
            response = http.post("/generate", json=body)
            return response.status_code, response.headers.get("retry-after"), time.perf_counter() - started, response.json()

        # one client, built beforehand: six `httpx.post` calls would each build an SSL context in this process
        # (CPU time that also delays the server's event loop here, ~1 s on a busy machine)
        with httpx.Client(base_url=base_url, timeout=60) as http, ThreadPoolExecutor(6) as pool:
            results = list(pool.map(post, [http] * 6))
        statuses = sorted(status for status, *_ in results)
        assert statuses == [200] + [503] * 5, results
        assert all(int(retry) >= 1 for status, retry, *_ in results if status == 503)
        waited = [r for r in results if r[0] == 503 and "decoding batch" in r[3]["detail"]]
        assert len(waited) == 2 and all(0.35 < seconds < 0.8 for *_, seconds, _ in waited)
        assert app.state.admission.in_flight == 0
        assert httpx.post(base_url + "/generate", json={"prompt": "Hi", "max_new_tokens": 2}, timeout=30).status_code == 200


def test_the_compute_budget_ends_one_row_not_the_batch(served):
    limits = Limits(max_compute_s=0.3)
    with serving(slowed(served, 0.03), limits) as (base_url, _):
        with ThreadPoolExecutor(2) as pool:
            long = pool.submit(httpx.post, base_url + "/generate",
                               json={"prompt": "Hi", "max_new_tokens": 200, "ignore_eos": True}, timeout=60)
            short = pool.submit(httpx.post, base_url + "/generate",
                                json={"prompt": "In 1905", "max_new_tokens": 5, "ignore_eos": True}, timeout=60)
            long, short = long.result().json(), short.result().json()
    assert long["finish_reason"] == "time_limit" and 3 <= long["generated_tokens"] < 30
    assert short["finish_reason"] == "length" and short["generated_tokens"] == 5


def test_generation_and_qa_share_the_compute_slot_fairly(served, tiny_qa_onnx_repo):
    """Four clients keep `/qa` busy (each answer takes 20 ms) while one `/generate` decodes 30 tokens (5 ms a
    step): the batch lets at most one waiting call through between two of its steps, so the generation takes a
    share of the slot rather than waiting behind the whole queue at every step — and `/qa` keeps being served
    while it decodes (neither starves)."""
    from pocketlm.hub import resolve
    from pocketlm.serving.models import load_qa

    log: list[str] = []
    qa = load_qa(resolve(tiny_qa_onnx_repo))
    qa = replace(qa, runtime=SlowAnswers(qa.runtime, 0.02, log))
    with serving(slowed(served, 0.005, log), served_qa=qa) as (base_url, app):
        done = []

        def ask():
            with httpx.Client(base_url=base_url, timeout=60) as http:
                while not done:
                    assert http.post("/qa", json={"question": "Who?", "context": "Ada wrote it."}).status_code == 200

        with ThreadPoolExecutor(4) as pool:
            askers = [pool.submit(ask) for _ in range(4)]
            wait_until(lambda: log.count("qa") >= 8)
            started = len(log)
            response = httpx.post(base_url + "/generate", timeout=60,
                                  json={"prompt": "The history of the city", "max_new_tokens": 30, "ignore_eos": True})
            ended = len(log)
            done.append(True)
            for asker in askers:
                asker.result()
    assert response.status_code == 200 and response.json()["generated_tokens"] == 30
    during = log[started:ended]
    first, last = during.index("step"), len(during) - during[::-1].index("step")
    decoding = "".join("s" if event == "step" else "q" for event in during[first:last])
    assert decoding.count("s") == 30 and "qq" not in decoding, decoding  # never two calls between two steps
    assert decoding.count("q") >= 5, decoding  # and /qa was answered all along


def test_rows_join_and_leave_the_cache_intact(served):
    """`KVState.concat` then `select` gives each row back exactly its own cache, without shared padding."""
    lm = served.runtime
    prompts = corpus_prompts(lm, 3, [4, 9, 6])
    _, first = lm.prefill(prompts[:1])
    _, rest = lm.prefill(prompts[1:])
    merged = KVState.concat([first, rest])
    assert merged.rows == 3 and merged.length == 9 and merged.attention_mask.sum(1).tolist() == [4, 9, 6]
    back = merged.select([0])
    assert back.length == 4 and np.array_equal(back.next_positions, first.next_positions)
    for name, array in first.cache.items():
        assert np.array_equal(back.cache[name], array)
    assert merged.select([2, 0]).length == 6  # 9-token row gone: only the columns the 6-token row needs stay


def test_a_block_of_rows_leaving_little_padding_is_selected_without_a_copy(served):
    """The oldest rows of a continuous batch finish first, so the rows kept are one block: `select` then returns
    views of it (no copy of the cache) unless dropping padding columns saves a quarter of them, and the block
    decodes exactly as a copy would."""
    lm = served.runtime
    prompts = corpus_prompts(lm, 3, [9, 8, 9])
    logits, merged = lm.prefill(prompts)
    kept = merged.select([1, 2])
    assert kept.length == 9  # the 8-token row's one padding column stays (dropping it would copy the cache)
    assert all(np.shares_memory(kept.cache[name], merged.cache[name]) for name in merged.cache)
    copied = KVState({n: a[1:].copy() for n, a in merged.cache.items()}, merged.attention_mask[1:].copy(),
                     merged.next_positions[1:].copy())
    next_tokens = logits[1:].argmax(-1)
    assert np.array_equal(lm.decode_step(kept, next_tokens)[0], lm.decode_step(copied, next_tokens)[0])
    assert not np.shares_memory(merged.select([0, 2]).cache["past_key_values.0.key"], merged.cache["past_key_values.0.key"])


def test_the_command_line_picks_the_scheduler_and_refuses_a_batch_unstable_graph(capsys):
    from pocketlm.serving.__main__ import parse_args
    from pocketlm.serving.scheduler import default_scheduler

    assert parse_args([]).scheduler is None  # the app picks by the LM's graph:
    assert default_scheduler("fp32") == "continuous" and default_scheduler("int8") == "serial"
    assert default_scheduler("int8-static") == "continuous"  # batch-stable
    assert parse_args(["--lm-precision", "int8-static", "--scheduler", "continuous"]).lm_precision == "int8-static"
    assert parse_args(["--scheduler", "continuous"]).scheduler == "continuous"
    assert parse_args(["--scheduler", "serial"]).scheduler == "serial"
    with pytest.raises(SystemExit):
        parse_args(["--lm-precision", "int8", "--scheduler", "continuous"])
    assert "--scheduler continuous needs --lm-precision fp32 or int8-static" in capsys.readouterr().err


def test_the_servers_spelled_out_precisions_are_the_librarys(capsys):
    """`python -m pocketlm.serving` names the LM precisions and the batch-stable ones without importing them
    (that import would cost start-up time): every precision the library has is accepted, nothing else, and
    continuous batching is allowed exactly for `BATCH_STABLE_PRECISIONS`, as the app's default says."""
    from pocketlm.inference.onnx_lm import BATCH_STABLE_PRECISIONS, LM_PRECISIONS
    from pocketlm.serving.__main__ import parse_args
    from pocketlm.serving.scheduler import default_scheduler

    with pytest.raises(SystemExit):
        parse_args(["--lm-precision", "fp16"])
    assert f"choose from {', '.join(map(repr, LM_PRECISIONS))})" in capsys.readouterr().err
    for precision in LM_PRECISIONS:
        stable = precision in BATCH_STABLE_PRECISIONS
        assert default_scheduler(precision) == ("continuous" if stable else "serial")
        if stable:
            assert parse_args(["--lm-precision", precision, "--scheduler", "continuous"]).lm_precision == precision
        else:
            with pytest.raises(SystemExit):
                parse_args(["--lm-precision", precision, "--scheduler", "continuous"])


def test_load_benchmark_writes_its_record(tiny_lm_onnx_repo, tiny_qa_onnx_repo, tmp_path):
    import runpy

    from pocketlm.benchmarking import read_results
    from pocketlm.settings import REPO_ROOT

    main = runpy.run_path(str(REPO_ROOT / "benchmarks" / "serving_load.py"))["main"]
    assert main(["--clients", "1,2", "--requests_per_client", "2", "--warmup", "1", "--mixed_clients", "2",
                 "--rounds", "2", "--output_dir", str(tmp_path)]) == 0
    record = read_results(tmp_path, "serving_load")
    assert record is not None and record["errors"] == 0
    for kind in ("serial", "continuous"):
        assert record["servers"][kind]["scheduler"] == kind
        for clients in ("1", "2"):
            cell = record["cells"][kind][clients]
            assert cell["requests"] == 2 * 2 * int(clients) and cell["tokens"] == 32 * cell["requests"]  # 2 rounds
            rounds = cell["rounds_tokens_per_s"]
            assert len(rounds) == 2 and min(rounds) <= cell["tokens_per_s"] <= max(rounds)
            assert len(cell["rounds_generate_p95_ms"]) == 2
            assert max(cell["rounds_generate_p95_ms"]) >= cell["generate_ms"]["p50_ms"]
            assert all(0 <= steal < 1 for steal in cell["rounds_steal_share"])  # /proc/stat: a Linux machine
            assert cell["tokens_per_s"] > 0 and cell["generate_ms"]["n"] >= 1 and cell["first_token_ms"]["n"] >= 1
            assert cell["first_token_ms"]["p50_ms"] <= cell["stream_ms"]["p50_ms"]
    for kind in ("serial", "continuous"):  # the mixed phase: each client alternates /generate and /qa
        mixed = record["mixed"][kind]
        assert mixed["requests"] == 16 and mixed["generate_ms"]["n"] == 8 and mixed["qa_ms"]["n"] == 8
    assert "Each round at 2 clients, in order:" in (tmp_path / "serving_load.md").read_text()
    assert set(record["speedup"]) == {"1", "2"}  # 8 clients not measured here: no target on them
    assert set(record["targets"]) == {"mixed_continuous_generate_faster_qa_no_slower"}
    assert any("tokens/s" in label for label, _ in record["figures"])
    assert (tmp_path / "serving_load.png").is_file() and "× serial" in (tmp_path / "serving_load.md").read_text()
