"""The Gradio Spaces and the suite: real processes on loopback, driven through `gradio_client`, plain HTTP and a
headless Chromium, on tiny published exports (random weights, real tokenizers).

One suite process serves everything here (REST routes, the four tabs, the browser); it starts with a
`sitecustomize` that refuses and records every non-loopback connection, so "no outbound network" is checked,
not assumed. One standalone Space runs through its own `app.py`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from fixture_models import publish_random_qa_model, qa_fixture_card

from pocketlm.hub import publish, resolve
from pocketlm.inference.onnx_lm import OnnxCausalLM, SamplingParams
from pocketlm.inference.qa_engine import OnnxQuestionAnswerer
from pocketlm.serving.schemas import MAX_CONTEXT_CHARS
from pocketlm.settings import REPO_ROOT
from pocketlm.spaces import SPACE_NAMES
from pocketlm.spaces.launch import SPACES_DIR, running_app, running_suite
from pocketlm.spaces.examples import CHAT_EXAMPLES, QA_CONTEXT, QA_EXAMPLES

QA_REPO, QA_ONNX_REPO = "pocketlm-tests/spaces-qa", "pocketlm-tests/spaces-qa-onnx"
RAG_INDEX_REPO = "pocketlm-tests/spaces-rag-index"
QUESTION = QA_EXAMPLES[0][0]
PROMPT = "The history of the city begins"

# Refuses and records any connection (or name lookup) that leaves the machine, in the process it is loaded in.
NETWORK_GUARD = textwrap.dedent('''
    import ipaddress, os, socket

    _LOG = os.environ["POCKETLM_TEST_NETWORK_LOG"]
    open(_LOG + ".armed", "w").close()

    def _local(host):
        if host in ("localhost", "", None):
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def _refuse(what):
        with open(_LOG, "a") as log:
            log.write(what + "\\n")
        raise OSError(f"test network guard: {what} refused")

    _connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
            _refuse(f"connect {address}")
        return _connect(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if isinstance(host, bytes):
            host = host.decode()
        if not _local(host):
            _refuse(f"getaddrinfo {host}")
        return _getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
''')


@pytest.fixture(scope="module")
def qa_pair(tmp_path_factory) -> tuple[str, str]:
    """A 2-layer BERT QA model (random weights, MiniLM's tokenizer) published as a PyTorch checkpoint and as its
    ONNX export (fp32 + int8): the benchmark tab compares these two forms of one model."""
    from pocketlm.inference.qa_onnx_export import export_question_answering

    publish_random_qa_model(QA_REPO, "tiny QA (test fixture)")
    card = qa_fixture_card("tiny QA (test fixture)")
    publish(QA_ONNX_REPO, lambda folder: export_question_answering(resolve(QA_REPO), folder), card)
    return QA_REPO, QA_ONNX_REPO


@pytest.fixture(scope="module")
def rag_index(tmp_path_factory) -> str:
    """A FAISS index over the Super Bowl 50 passages of the RAG dev set plus 8 WikiText distractors, built and
    published by the RAG lab's own builder (no query adapter; the tiny LM fixture as generator)."""
    from pocketlm.rag.builder import IndexBuildConfig, build_and_publish_index
    from pocketlm.rag.corpus import rag_dev

    passages, questions = rag_dev()
    kept = [p for p in passages if p.id.startswith("val-00-")]
    folder = tmp_path_factory.mktemp("rag-data")
    (folder / "passages.jsonl").write_text("".join(json.dumps(p.to_dict()) + "\n" for p in kept))
    (folder / "qa.jsonl").write_text("".join(
        json.dumps({"id": q.id, "question": q.question, "answers": list(q.answers), "passage_id": q.passage_id}) + "\n"
        for q in questions if q.passage_id.startswith("val-00-")))
    config = IndexBuildConfig(passages=str(folder / "passages.jsonl"), qa=str(folder / "qa.jsonl"), max_distractors=8,
                              opq_dim=32, pq_m=8, pq_bits=4)
    build_and_publish_index(config, RAG_INDEX_REPO)
    return RAG_INDEX_REPO


@pytest.fixture(scope="module")
def suite(tiny_lm_onnx_repo, qa_pair, rag_index, tmp_path_factory):
    guard_dir = tmp_path_factory.mktemp("network-guard")
    (guard_dir / "sitecustomize.py").write_text(NETWORK_GUARD)
    network_log = guard_dir / "outbound.log"
    env = {"PYTHONPATH": f"{guard_dir}:{REPO_ROOT}", "POCKETLM_TEST_NETWORK_LOG": str(network_log)}
    # No RAG LoRA in the test hub: the agent answers with the base LM (the tiny LM fixture).
    # The random-weight QA checkpoint reads for the agent too: its spans are arbitrary, their source and score real;
    # they score far under the default threshold, so the agent answers only with the threshold at 0.
    args = ["--qa", qa_pair[1], "--qa-pytorch", qa_pair[0], "--rag-index", rag_index, "--rag-reader", qa_pair[0],
            "--rag-abstain-below", "0"]
    with running_suite(args, env=env) as process:
        process.network_log = network_log
        yield process


@pytest.fixture(scope="module")
def http(suite):
    with httpx.Client(base_url=suite.base_url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def gradio(suite):
    from gradio_client import Client

    return Client(suite.base_url + "/", verbose=False)


@pytest.fixture(scope="module")
def local_lm(tiny_lm_onnx_repo) -> OnnxCausalLM:
    return OnnxCausalLM(resolve(tiny_lm_onnx_repo))


@pytest.fixture(scope="module")
def local_qa(qa_pair) -> OnnxQuestionAnswerer:
    return OnnxQuestionAnswerer.from_pretrained(qa_pair[1], quantized=True)


# -- the REST API on the suite's app -----------------------------------------------------------------------------
def test_rest_routes_are_served_by_the_suite_process(http, local_lm, local_qa):
    health = http.get("/health").json()
    assert set(health["models"]) == {"lm", "qa"} and health["models"]["qa"]["id"] == QA_ONNX_REPO

    generated = http.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 8, "ignore_eos": True}).json()
    ids = local_lm.encode(PROMPT)
    expected = local_lm.generate_ids([ids], SamplingParams(max_new_tokens=8, stop_at_eos=False))[0]
    assert generated["text"] == local_lm.decode(expected) and generated["generated_tokens"] == 8

    answered = http.post("/qa", json={"question": QUESTION, "context": QA_CONTEXT}).json()
    expected_answer = local_qa.answer(QUESTION, QA_CONTEXT)
    assert (answered["answer"], answered["start"]) == (expected_answer.text, expected_answer.start)

    refused = http.post("/qa", json={"question": "", "context": QA_CONTEXT})
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "question"]


def test_an_idle_suite_leaves_the_cores_to_the_models(suite):
    """Once every tab has loaded, the idle suite's event loop (its main thread) wakes up fewer than 150 times a
    second (Gradio's queue, left at its defaults, polls every millisecond: ~1,000 wake-ups a second, each taking
    the GIL and a core from model calls), and the process uses under 5 % of a core."""
    import time

    deadline = time.monotonic() + 300
    while "all tabs loaded" not in suite.log_path.read_text():
        assert time.monotonic() < deadline, suite.log_path.read_text()[-2000:]
        time.sleep(0.2)
    time.sleep(1)
    pid = suite.process.pid

    def wakeups_and_cpu() -> tuple[int, float]:
        status = Path(f"/proc/{pid}/task/{pid}/status").read_text()  # the main thread: the event loop
        wakeups = int(status.split("voluntary_ctxt_switches:")[1].split()[0])
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return wakeups, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    (wakeups, cpu), started = wakeups_and_cpu(), time.monotonic()
    time.sleep(3)
    (wakeups_after, cpu_after), seconds = wakeups_and_cpu(), time.monotonic() - started
    assert (wakeups_after - wakeups) / seconds < 150, f"{(wakeups_after - wakeups) / seconds:.0f} wake-ups a second"
    assert (cpu_after - cpu) / seconds < 0.05, f"the idle suite used {(cpu_after - cpu) / seconds:.1%} of a core"


def test_docs_openapi_and_the_page_share_one_app(http):
    paths = http.get("/openapi.json").json()["paths"]
    assert {"/generate", "/generate/stream", "/generate/batch", "/qa", "/health"} <= set(paths)
    docs = http.get("/docs")
    assert docs.status_code == 200 and "/static/swagger-ui/swagger-ui-bundle.js" in docs.text
    assert http.get("/static/swagger-ui/swagger-ui-bundle.js").status_code == 200
    page = http.get("/")
    assert page.status_code == 200 and "gradio" in page.text.lower()
    config = http.get("/config").json()
    tabs = [c["props"]["label"] for c in config["components"] if c["type"] == "tabitem"]
    assert tabs == ["Text generation", "Question answering", "ONNX vs PyTorch", "RAG chat"]


# -- each Space's endpoint through gradio_client -----------------------------------------------------------------
def test_text_generation_streams_the_onnx_runtime_tokens(gradio, local_lm):
    job = gradio.submit(PROMPT, 20, 0.7, 64, 7, api_name="/generate_text")
    updates = [text for text, _ in job]
    final_text, stats = job.result()
    ids = local_lm.encode(PROMPT)
    params = SamplingParams(max_new_tokens=64, do_sample=True, temperature=0.7, top_k=20, seed=7)
    pieces = [text for _, text in local_lm.stream_text(ids, params)]
    assert final_text == "".join(pieces)  # the same sampled tokens: the page passes every setting through
    assert f"{len(pieces)} tokens in" in stats and f"prompt {len(ids)} tokens" in stats
    growing = [text for text in dict.fromkeys(updates) if text]
    assert len(growing) >= 3, "the continuation arrived in one piece, not streamed"
    assert all(final_text.startswith(text) for text in growing)


def test_question_answering_highlights_the_answer_with_its_score(gradio, local_qa):
    question, context = QA_EXAMPLES[1]
    answer, score, highlighted, details = gradio.predict(question, context, api_name="/answer_question")
    expected = local_qa.answer(question, context)
    assert answer == expected.text and score == pytest.approx(expected.score, abs=1e-4)
    segments = highlighted if isinstance(highlighted, list) else highlighted["value"]
    assert "".join(s["token"] for s in segments) == context
    assert [s["token"] for s in segments if s["class_or_confidence"] == "answer"] == [answer]
    assert f"characters {expected.start}–{expected.end}" in details


def test_benchmark_times_three_runtimes_of_one_model(gradio):
    table, plot = gradio.predict(QUESTION, QA_CONTEXT, 3, api_name="/compare_runtimes")
    rows = {row[0]: row for row in table["data"]}
    assert list(rows) == ["PyTorch fp32", "ONNX Runtime fp32", "ONNX Runtime int8"]
    assert all(0 < row[1] <= row[2] for row in rows.values())  # p50 <= p95
    assert rows["PyTorch fp32"][3] == 1.0
    assert rows["ONNX Runtime fp32"][4] == rows["PyTorch fp32"][4]  # fp32 export: the same answer as PyTorch
    assert plot["type"] == "matplotlib" and plot["plot"].startswith("data:image/")


def test_benchmark_tab_shows_the_recorded_benchmark_results(qa_pair, tmp_path):
    """What `benchmarks/qa_latency.py` writes is what the tab shows beside the live run."""
    import runpy

    from pocketlm.spaces.onnx_benchmark import recorded_results

    text, image = recorded_results(tmp_path)
    assert "No recorded results yet" in text and image is None
    benchmark = runpy.run_path(str(REPO_ROOT / "benchmarks" / "qa_latency.py"), run_name="qa_latency")["main"]
    assert benchmark(["--model", qa_pair[0], "--onnx_model", qa_pair[1], "--requests", "3", "--warmup", "1",
                      "--eval_samples", "0", "--output_dir", str(tmp_path)]) == 0
    text, image = recorded_results(tmp_path)
    assert all(runtime in text for runtime in ("PyTorch fp32", "ONNX Runtime fp32", "ONNX Runtime int8"))
    assert "3 SQuAD validation questions per runtime" in text and image and Path(image).is_file()


def _text(message: dict) -> str:
    """A chat message's text (Gradio 6 sends the content as a list of typed parts)."""
    content = message["content"]
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


def test_rag_chat_cites_searches_and_remembers_three_exchanges(suite, rag_index):
    from gradio_client import Client

    from pocketlm.rag.retriever import RagRetriever

    chat = Client(suite.base_url + "/", verbose=False)  # a session of its own: its own memory
    question = "Which NFL team won Super Bowl 50?"
    _, history, fragments, memory = chat.predict(question, [], api_name="/chat")
    expected_ids = [f.id for f in RagRetriever.from_pretrained(rag_index).retrieve(question, 3)]
    shown_ids = [line.split("**[")[1].split("]")[0] for line in fragments.split("\n") if "**[" in line]
    assert shown_ids and shown_ids == expected_ids[: len(shown_ids)]  # what the agent was given, in rank order
    assert _text(history[-2]) == question
    reply = _text(history[-1])  # the answer, then its source fragment and the reader's score, then the generator's
    source, title, score = re.search(r"source: \*\*\[(\S+)\]\*\* \*(.+?)\* · reader score ([0-9.]+)", reply).groups()
    assert source in shown_ids and 0 <= float(score) <= 1 and "_generator:_" in reply
    assert f"✅ **[{source}]** *{title}*" in fragments  # marked in the fragments panel
    assert "1 of at most 3 exchanges" in memory

    _, history, fragments, memory = chat.predict(CHAT_EXAMPLES[2], history, api_name="/chat")  # !search Olmec colossal heads
    reply = _text(history[-1])
    assert "MOCK web_search" in reply and "1. [web-1] Olmec colossal heads — https://mock-search.invalid/" in reply
    assert "MOCK web_search results" in fragments and "1 of at most 3 exchanges" in memory  # a search is no exchange

    for follow_up in ("Where was the game played?", "Who sang at halftime?", "Who was the MVP?"):
        _, history, _, memory = chat.predict(follow_up, history, api_name="/chat")
    assert "3 of at most 3 exchanges" in memory and question not in memory and "Who was the MVP?" in memory
    _, _, _, memory = chat.predict("!reset", history, api_name="/chat")
    assert "Memory: empty" in memory


def test_rag_chat_indexes_uploads_for_its_session_and_refuses_bad_files_by_name(suite, tmp_path):
    from gradio_client import Client, handle_file

    question = "Who kept the Kestrel Point lighthouse?"
    (tmp_path / "keeper.md").write_text("# Lighthouse\n\nThe Kestrel Point lighthouse was kept by Elsa Brandt from 1887.")
    (tmp_path / "photo.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    chat = Client(suite.base_url + "/", verbose=False)
    _, status = chat.predict([handle_file(str(tmp_path / "keeper.md")), handle_file(str(tmp_path / "photo.txt"))],
                             api_name="/add_documents")
    assert "✅ **keeper.md**" in status and "❌ **photo.txt**: binary content, not a text file" in status
    _, history, fragments, _ = chat.predict(question, [], api_name="/chat")
    assert "**[keeper.md#1]** *keeper.md › Lighthouse*" in fragments  # retrieved from the upload, cited by file and chunk
    _, _, elsewhere, _ = Client(suite.base_url + "/", verbose=False).predict(question, [], api_name="/chat")
    assert "keeper.md" not in elsewhere  # another session's index never holds them

    from pocketlm.spaces.rag_chat import UPLOAD_BYTES

    small = httpx.post(suite.base_url + "/gradio_api/upload", files={"files": ("a.txt", b"x" * (UPLOAD_BYTES - 1000))}, timeout=30)
    large = httpx.post(suite.base_url + "/gradio_api/upload", files={"files": ("b.txt", b"x" * (UPLOAD_BYTES + 1000))}, timeout=30)
    assert small.status_code == 200 and large.status_code == 413


@pytest.mark.parametrize("endpoint, args, message", [
    ("/answer_question", ("", QA_CONTEXT), "Question: must not be empty"),
    ("/answer_question", ("   ", QA_CONTEXT), "Question: question must contain some non-whitespace text"),
    ("/answer_question", (QUESTION, "x" * (MAX_CONTEXT_CHARS + 1)), f"Context: String should have at most {MAX_CONTEXT_CHARS} characters"),
    ("/compare_runtimes", (QUESTION, "", 3), "Context: must not be empty"),
    ("/generate_text", ("", 50, 0.8, 8, 0), "Prompt: must not be empty"),
    ("/generate_text", ("word " * 600, 50, 0.8, 8, 0), "Prompt: "),
    ("/generate_text", (PROMPT, 50, 0.8, 8, -1), "Seed: Input should be greater than or equal to 0"),
    ("/chat", ("  ", []), "Message: must not be empty"),
    ("/chat", ("!search", []), "Usage: !search <term>"),
    ("/chat", ("!bogus", []), "Unknown command !bogus"),
])
def test_bad_input_is_a_readable_message(gradio, endpoint, args, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as raised:
        gradio.predict(*args, api_name=endpoint)
    assert message in str(raised.value) and "Traceback" not in str(raised.value)


# -- the page in a browser ---------------------------------------------------------------------------------------
def test_browser_runs_every_tab_and_shows_real_answers(suite, local_qa, tmp_path):
    from pocketlm.spaces.browser import visit_suite

    visit = visit_suite(suite.base_url, tmp_path, list(SPACE_NAMES), ["Who won Super Bowl 50?", "!search Olmec heads"])
    assert visit.tabs["text_generation"].answer.strip()
    assert visit.tabs["question_answering"].answer == local_qa.answer(QUESTION, QA_CONTEXT).text
    assert "ONNX Runtime int8" in visit.tabs["onnx_benchmark"].answer
    first_reply, search_reply = visit.tabs["rag_chat"].answer.split("\n---\n")
    assert re.search(r"source: \[\S+\] .+ · reader score [0-9.]+", first_reply)
    assert "MOCK web_search" in search_reply and "[web-1] Olmec colossal heads" in search_reply
    assert "Question: must not be empty" in visit.error_message and "Traceback" not in visit.error_message
    assert visit.outside_requests == []
    for tab in SPACE_NAMES:
        assert visit.tabs[tab].screenshot.stat().st_size > 20_000


def test_the_suite_made_no_outbound_connection(suite):
    """Run last in this module: everything above has started, loaded and used every tab."""
    assert suite.process.poll() is None
    assert Path(f"{suite.network_log}.armed").exists()  # the guard was loaded in the suite process
    assert not suite.network_log.exists(), suite.network_log.read_text()


# -- standalone Spaces -------------------------------------------------------------------------------------------
def test_a_standalone_space_serves_its_endpoint(qa_pair, local_qa):
    from gradio_client import Client

    with running_app(SPACES_DIR / "question_answering" / "app.py", ["--qa", qa_pair[1]], ready_path="/config") as app:
        answer, score, _, _ = Client(app.base_url + "/", verbose=False).predict(*QA_EXAMPLES[2], api_name="/answer_question")
    assert answer == local_qa.answer(*QA_EXAMPLES[2]).text


def test_a_missing_model_is_a_one_line_error_naming_the_flag():
    result = subprocess.run([sys.executable, str(SPACES_DIR / "suite" / "app.py"), "--lm", "pocketlm/not-built"],
                            capture_output=True, text=True, cwd=REPO_ROOT, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 2
    assert result.stderr.startswith("error: --lm pocketlm/not-built:") and "Traceback" not in result.stderr


# -- the main job --------------------------------------------------------------------------------------------------
def test_demo_runs_missing_steps_in_order_then_skips_them(tmp_path, monkeypatch, capfd):
    from pocketlm import demo

    made = tmp_path / "made"
    write = "import pathlib, sys; pathlib.Path(sys.argv[1]).mkdir(parents=True); print('built', sys.argv[1])"
    steps = [demo.Step(f"step {n}", [sys.executable, "-c", write, str(made / str(n))], lambda n=n: made / str(n))
             for n in (1, 2)]
    serve = demo.Step("serve", [sys.executable, "-c", "import sys; print('serving', sys.argv[1:])"], None, serves=True)
    monkeypatch.setattr(demo, "STEPS", [*steps, serve])
    monkeypatch.setenv("POCKETLM_RUNS_DIR", str(tmp_path / "runs"))

    assert demo.main(["--port", "7999"]) == 0
    first = capfd.readouterr().out
    assert "3 steps, 0 already done" in first
    assert first.index("━━ [1/3] step 1") < first.index(f"built {made / '1'}") < first.index("━━ [2/3] step 2")
    assert first.index("built 2 artifact(s)") < first.index("serving ['--host', '127.0.0.1', '--port', '7999']")
    timings = json.loads((tmp_path / "runs" / "demo" / "last_run.json").read_text())
    assert [t["step"] for t in timings["steps"]] == ["step 1", "step 2"]

    assert demo.main(["--no-launch"]) == 0  # a second run: everything is there
    second = capfd.readouterr().out
    assert "2 steps, 2 already done" in second and "━━" not in second
