"""The OpenAI-compatible API, driven by the real `openai` client and LangChain's `ChatOpenAI` over HTTP on
127.0.0.1: the ONNX LM behind `/v1/completions`, the RAG agent (tiny LM, MiniLM, FAISS, users' documents)
behind `/v1/chat/completions`."""

from __future__ import annotations

import re
from dataclasses import replace

import openai
import pytest
from loopback_server import serving, slowed

from pocketlm.rag.corpus import Passage
from pocketlm.serving.admission import Limits
from pocketlm.serving.openai_api import RAG_MODEL, rag_answer
from pocketlm.settings import REPO_ROOT

LIMITS = Limits()
PROMPT = "The history of the city begins in the Middle Ages, when"
NOTE = ("The Kestrel Point lighthouse was kept by Elsa Brandt from 1887 until 1921. "
        "She trimmed the wick of the lamp every night at dusk.")


@pytest.fixture(scope="module")
def lm(tiny_lm_onnx_repo):
    from pocketlm.serving.models import load_lm

    return load_lm(tiny_lm_onnx_repo)


@pytest.fixture(scope="module")
def agent(rag_files, rag_encoder, tiny_lm_repo, rag_reader_repo):
    """The RAG agent over the 50 test passages plus one user document passage, the tiny LM as generator."""
    from pocketlm.inference.qa_torch import TorchQuestionAnswerer
    from pocketlm.rag.chain import RagAgent
    from pocketlm.rag.corpus import read_passages_and_questions
    from pocketlm.rag.embeddings import encode
    from pocketlm.rag.generator import load_generator
    from pocketlm.rag.index import IndexSpec, PassageIndex
    from pocketlm.rag.retriever import RagRetriever

    passages, _ = read_passages_and_questions(*rag_files)
    index = PassageIndex.build(encode(rag_encoder, [p.text for p in passages], cache=True), passages, IndexSpec("flat"), "minilm")
    retriever = RagRetriever(rag_encoder, index)
    retriever.add_passages([Passage("keeper.md#1", "keeper.md", NOTE)])
    model, tokenizer, description = load_generator(lora=None, base=tiny_lm_repo)
    reader = TorchQuestionAnswerer.from_pretrained(rag_reader_repo)
    return RagAgent(retriever, model, tokenizer, reader, k=2, abstain_below=0.0, description=description)


@pytest.fixture(scope="module")
def app(lm, agent):
    from pocketlm.serving.app import create_app
    from pocketlm.serving.models import ServingModels
    from pocketlm.serving.openai_api import serve_rag

    app = create_app(ServingModels(lm=lm), LIMITS)
    serve_rag(app, agent)
    return app


@pytest.fixture(scope="module")
def base_url(app):
    with serving(app, LIMITS) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


def greedy(lm, prompt: str, max_tokens: int) -> tuple[str, str]:
    """What the ONNX LM continues `prompt` with, alone and greedily, and why it stopped (OpenAI's words)."""
    from pocketlm.inference.onnx_lm import SamplingParams

    runtime = lm.runtime
    tokens = runtime.generate_ids([runtime.encode(prompt)], SamplingParams(max_new_tokens=max_tokens))[0]
    if tokens and tokens[-1] == runtime.eos_token_id:
        return runtime.decode(tokens[:-1]), "stop"
    return runtime.decode(tokens), "length"


def test_models_lists_the_lm_and_the_rag_agent(client, lm):
    assert [model.id for model in client.models.list()] == [lm.id, RAG_MODEL]


def test_completions_are_the_lm_greedy_continuation_whole_and_streamed(client, lm):
    expected, finish = greedy(lm, PROMPT, 12)
    assert expected.strip()
    whole = client.completions.create(model=lm.id, prompt=PROMPT, max_tokens=12, temperature=0)
    assert whole.choices[0].text == expected and whole.choices[0].finish_reason == finish
    assert whole.usage.prompt_tokens == len(lm.runtime.encode(PROMPT)) and whole.usage.completion_tokens == 12
    assert whole.object == "text_completion" and whole.model == lm.id

    chunks = list(client.completions.create(model=lm.id, prompt=PROMPT, max_tokens=12, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert len([c for c in chunks if c.choices and c.choices[0].text]) > 1  # token by token, not one piece
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == finish
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_stop_strings_cut_the_text_whole_and_streamed(client, lm):
    expected, _ = greedy(lm, PROMPT, 24)
    stop = expected[len(expected) // 2: len(expected) // 2 + 3]
    assert stop.strip()
    cut = expected[: expected.index(stop)]
    whole = client.completions.create(model=lm.id, prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop, "never-seen"])
    assert whole.choices[0].text == cut and whole.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=lm.id, prompt=PROMPT, max_tokens=24, temperature=0, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut


def test_sampling_with_a_seed_is_reproducible_and_top_p_narrows_it(client, lm):
    def sample(**settings) -> str:
        return client.completions.create(model=lm.id, prompt=PROMPT, max_tokens=10, seed=7, **settings).choices[0].text

    assert sample(temperature=1.3, top_p=0.95) == sample(temperature=1.3, top_p=0.95)
    assert sample(temperature=1.0, top_p=1e-6) == greedy(lm, PROMPT, 10)[0]  # a nucleus of one token is greedy


@pytest.mark.parametrize("settings, param, status", [
    ({"n": 2}, "n", 422),
    ({"max_tokens": 0}, "max_tokens", 422),
    ({"temperature": 3}, "temperature", 422),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", 422),
    ({"prompt": ["one", "two"]}, "prompt", 422),
    ({"prompt": "word " * 700}, "prompt", 422),
    ({"extra_body": {"bogus": 1}}, "bogus", 422),
    ({"model": "gpt-4o"}, "model", 404),
])
def test_bad_requests_are_openai_errors_naming_the_field(client, lm, settings, param, status):
    request = {"model": lm.id, "prompt": PROMPT, "max_tokens": 4, **settings}
    with pytest.raises(openai.APIStatusError) as raised:
        client.completions.create(**request)
    error = raised.value
    assert error.status_code == status and error.body["param"] == param and param in error.message
    assert set(error.body) == {"message", "type", "param", "code"}


def test_chat_completions_answer_with_the_rag_agent_and_cite_fragments(client, agent):
    question = "Who kept the Kestrel Point lighthouse?"
    direct = rag_answer(agent, question, [])
    reply = client.chat.completions.create(model=RAG_MODEL, messages=[
        {"role": "system", "content": "You are helpful."}, {"role": "user", "content": question}])
    assert reply.choices[0].message.content == direct.text and reply.choices[0].finish_reason == "stop"
    extra = reply.model_extra
    assert extra["citations"] == direct.citations and extra["fragments"][0]["id"] == "keeper.md#1"
    assert "Elsa Brandt" in extra["fragments"][0]["text"] and reply.usage.prompt_tokens > 0
    assert set(extra["citations"]) <= {fragment["id"] for fragment in extra["fragments"]}

    chunks = list(client.chat.completions.create(model=RAG_MODEL, messages=[{"role": "user", "content": question}], stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == direct.text
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].model_extra["citations"] == direct.citations


def test_chat_uses_the_conversation_sent_with_the_question(client, agent):
    history = [("Which NFL team won Super Bowl 50?", "Denver Broncos"), ("Who lost?", "Carolina Panthers")]
    messages = [{"role": role, "content": text} for q, a in history for role, text in (("user", q), ("assistant", a))]
    messages.append({"role": "user", "content": [{"type": "text", "text": "Where was the game played?"}]})
    reply = client.chat.completions.create(model=RAG_MODEL, messages=messages)
    direct = rag_answer(agent, "Where was the game played?", history)
    assert reply.choices[0].message.content == direct.text
    searched = agent.answer("Where was the game played?", history).query
    # the conversation was used: the names of its latest exchange join the question
    assert "Where was the game played?" in searched and "Carolina Panthers" in searched


@pytest.mark.parametrize("body, param, status", [
    ({"messages": []}, "messages", 422),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages", 422),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role", 422),
    ({"messages": [{"role": "user", "content": "q" * 600}]}, "messages", 422),
    ({"n": 3}, "n", 422),
    ({"model": "pocketlm/tiny-lm-onnx"}, "model", 404),
])
def test_bad_chat_requests_are_openai_errors(client, body, param, status):
    request = {"model": RAG_MODEL, "messages": [{"role": "user", "content": "Who won?"}], **body}
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(**request)
    assert raised.value.status_code == status and raised.value.body["param"] == param


def test_langchain_chat_openai_invokes_and_streams_unchanged(base_url, agent):
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(model=RAG_MODEL, base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=120)
    question = "Who kept the Kestrel Point lighthouse?"
    expected = rag_answer(agent, question, []).text
    assert chat.invoke(question).content == expected
    pieces = [chunk.content for chunk in chat.stream(question)]
    assert len([p for p in pieces if p]) > 1 and "".join(pieces) == expected


def test_the_client_snippet_in_the_serving_docs_runs(base_url, lm, capsys):
    text = (REPO_ROOT / "docs" / "serving.md").read_text()
    section = text.split("## OpenAI-compatible API", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "http://127.0.0.1:8000/v1" in snippet
    exec(compile(snippet.replace("http://127.0.0.1:8000", base_url), "docs/serving.md", "exec"), {})
    printed = capsys.readouterr().out
    assert lm.id in printed and "keeper.md#1" in printed


def test_an_overloaded_server_answers_503_in_openai_shape_with_retry_after(client, app, base_url, lm):
    import httpx

    admission = app.state.admission
    admission.in_flight += admission.capacity  # every place taken: the next request is refused at admission
    try:
        with pytest.raises(openai.InternalServerError) as raised:
            client.completions.create(model=lm.id, prompt=PROMPT, max_tokens=4, stream=True)
        response = httpx.post(base_url + "/v1/completions", json={"model": lm.id, "prompt": PROMPT})
    finally:
        admission.in_flight -= admission.capacity
    assert raised.value.status_code == 503 and raised.value.body["code"] == "overloaded"
    assert response.status_code == 503 and int(response.headers["Retry-After"]) >= 1
    assert client.completions.create(model=lm.id, prompt=PROMPT, max_tokens=2).usage.completion_tokens == 2


def test_the_server_command_serves_the_rag_agent_over_a_documents_folder(rag_index_repo, tiny_lm_onnx_repo,
                                                                         rag_reader_repo, tmp_path):
    from pocketlm.serving.launch import running_server

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "keeper.md").write_text(f"# Lighthouse\n\n{NOTE}")
    (tmp_path / "docs" / "broken.pdf").write_bytes(b"%PDF-1.4\nnot really")
    args = ["--qa", "none", "--rag", rag_index_repo, "--rag-lora", "none", "--rag-reader", rag_reader_repo, "--rag-documents", str(tmp_path / "docs")]
    with running_server(args, log_path=tmp_path / "server.log", ready_timeout_s=300) as server:
        remote = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)
        assert [m.id for m in remote.models.list()] == [tiny_lm_onnx_repo, RAG_MODEL]
        reply = remote.chat.completions.create(model=RAG_MODEL, messages=[{"role": "user", "content": "Who kept the Kestrel Point lighthouse?"}])
        assert reply.model_extra["fragments"][0]["id"] == "keeper.md#1"
    log = (tmp_path / "server.log").read_text()
    assert "indexed 1 file(s) as 1 passages: keeper.md" in log and "refused broken.pdf: malformed PDF" in log


@pytest.mark.parametrize("scheduler", ["serial", "continuous"])
def test_completions_run_on_either_scheduler_and_a_client_that_leaves_frees_its_place(lm, scheduler):
    import time

    import httpx

    from pocketlm.serving.app import create_app
    from pocketlm.serving.models import ServingModels

    slow_lm = slowed(lm, 0.005)
    limits = replace(LIMITS, max_compute_s=60.0)  # the held stream below must not reach its time limit
    app = create_app(ServingModels(lm=slow_lm), limits, scheduler)
    expected, finish = greedy(lm, PROMPT, 16)
    stop = expected[8:11]
    with serving(app, limits) as url:
        remote = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        whole = remote.completions.create(model=lm.id, prompt=PROMPT, max_tokens=16, temperature=0)
        assert (whole.choices[0].text, whole.choices[0].finish_reason) == (expected, finish)
        streamed = remote.completions.create(model=lm.id, prompt=PROMPT, max_tokens=16, temperature=0, stop=stop, stream=True)
        assert "".join(c.choices[0].text for c in streamed) == expected[: expected.index(stop)]

        body = {"model": lm.id, "prompt": PROMPT, "max_tokens": 256 - len(lm.runtime.encode(PROMPT)), "stream": True,
                "temperature": 0}
        slow_lm.runtime.session.hold_after_prefill()  # the prefill makes the first token; the next step waits
        try:
            with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as response:
                lines = response.iter_lines()
                first, in_flight = next(lines), app.state.admission.in_flight
                if in_flight != 1:  # the stream is over already: how it ended says why
                    slow_lm.runtime.session.release()
                    pytest.fail(f"in flight: {in_flight} after {first!r}; the rest: {[line for line in lines if line][-3:]}")
                assert first.startswith("data: {")
        finally:
            slow_lm.runtime.session.release()
        deadline = time.monotonic() + 10  # the client hung up after one chunk: its place is given back
        while app.state.admission.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        assert app.state.admission.in_flight == 0
