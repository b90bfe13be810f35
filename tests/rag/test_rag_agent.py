"""The retriever, the LangChain agent (prompt, 3-exchange memory, mock web_search) and the REPL in a pty."""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest

from pocketlm.rag.chain import MAX_EXCHANGES, RagAgent, WindowedChatHistory, cite, web_query
from pocketlm.rag.prompt import Fragment
from pocketlm.rag.pty_session import PtySession
from pocketlm.rag.query_adapter import QueryAdapter
from pocketlm.rag.repl import repl
from pocketlm.rag.retriever import RagRetriever
from pocketlm.settings import REPO_ROOT


@pytest.fixture(scope="module")
def retriever(rag_index_repo, rag_encoder) -> RagRetriever:
    return RagRetriever.from_pretrained(rag_index_repo, encoder=rag_encoder)


@pytest.fixture(scope="module")
def agent(retriever, tiny_lm_repo, rag_reader_repo) -> RagAgent:
    from pocketlm.inference.qa_torch import TorchQuestionAnswerer
    from pocketlm.rag.generator import load_generator

    model, tokenizer, description = load_generator(lora=None, base=tiny_lm_repo)
    reader = TorchQuestionAnswerer.from_pretrained(rag_reader_repo)
    return RagAgent(retriever, model, tokenizer, reader, k=2, description=description)


def test_query_adapter_starts_as_the_identity(rag_encoder):
    from pocketlm.rag.embeddings import encode

    queries = encode(rag_encoder, ["Who won Super Bowl 50?", "What is a Toyota?"])
    np.testing.assert_allclose(QueryAdapter(384, 32).transform(queries), queries, atol=1e-6)


def test_retriever_returns_ranked_fragments_from_the_published_index(retriever):
    assert retriever.adapter is not None  # published with the index
    fragments = retriever.retrieve("Which NFL team won Super Bowl 50?", k=4)
    assert len(fragments) == 4 and all(isinstance(f, Fragment) for f in fragments)
    assert [f.score for f in fragments] == sorted((f.score for f in fragments), reverse=True)
    assert fragments[0].id.startswith("val-00-") and "Super Bowl" in fragments[0].text
    opq = RagRetriever.from_pretrained("pocketlm/rag-index", index_type="opq", use_adapter=False, encoder=retriever.encoder)
    assert opq.adapter is None and opq.retrieve("Which NFL team won Super Bowl 50?", k=4)[0].id.startswith("val-00-")


def test_memory_never_holds_more_than_three_exchanges():
    from langchain_core.messages import AIMessage, HumanMessage

    memory = WindowedChatHistory()
    for i in range(7):
        memory.add_messages([HumanMessage(f"q{i}"), AIMessage(f"a{i}")])
        assert len(memory.exchanges()) <= MAX_EXCHANGES and len(memory.messages) <= 2 * MAX_EXCHANGES
    assert memory.exchanges() == [("q4", "a4"), ("q5", "a5"), ("q6", "a6")]


def test_ask_puts_retrieved_fragments_and_history_in_the_prompt(agent):
    agent.reset()
    first = agent.ask("Which NFL team won Super Bowl 50?")
    assert first.fragments and all(f"[{f.id}] " in first.prompt for f in first.fragments)
    assert "Super Bowl" in first.prompt and first.prompt.rstrip().endswith("Answer:")
    second = agent.ask("Where was the game played?")
    assert f"Q: {first.question}\nA: {first.answer}" in second.prompt
    for i in range(4):
        agent.ask(f"What did Toyota sell in year {i}?")
    assert len(agent.history) == MAX_EXCHANGES and agent.history[-1][0] == "What did Toyota sell in year 3?"
    agent.reset()
    assert agent.history == []


def test_agent_calls_the_mock_web_search_when_asked(agent):
    calls = len(agent.web.calls)
    assert agent.ask("Which NFL team won Super Bowl 50?").web_search is None and len(agent.web.calls) == calls
    result = agent.ask("search the web for Tang dynasty poet")
    assert agent.web.calls[-1] == "Tang dynasty poet" and result.web_search is not None
    assert result.fragments and all(f.id.startswith("web-") for f in result.fragments)
    assert "[web-1] " in result.prompt
    assert "MOCK" in agent.search("battleship").to_text() and agent.web.calls[-1] == "battleship"
    assert web_query("please look up online for Du Fu?") == "Du Fu" and web_query("Who was Du Fu?") is None


def test_citations_name_the_fragments_holding_the_answer():
    fragments = [Fragment("a", "", "Denver Broncos won."), Fragment("b", "", "Carolina lost.")]
    assert cite("Denver Broncos", fragments) == ["a"] and cite("nothing like it", fragments) == []


@pytest.mark.slow
def test_repl_in_a_pseudo_terminal(rag_index_repo, tiny_lm_repo, rag_reader_repo):
    """Four interactions typed into a real terminal, then Ctrl-C: a clean exit with status 0."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "pocketlm.rag", "--k", "2", "--reader", rag_reader_repo, "--abstain_below", "0"]
    with PtySession(command, env=env, cwd=str(REPO_ROOT)) as session:
        session.expect(r"rag> ", timeout=300)
        session.sendline("Which NFL team won Super Bowl 50?")
        answer = session.expect(r"rag> ", timeout=180)
        assert "answer:" in answer and "[source: val-00-" in answer and "score " in answer  # the span's fragment
        assert "generator:" in answer and "[val-00-" in answer  # the generator's text beside; the retrieved fragments
        session.sendline("!search Tang dynasty poet")
        assert "MOCK web_search" in session.expect(r"rag> ", timeout=60)
        session.sendline("!help")
        assert "!reset" in session.expect(r"rag> ", timeout=60)
        session.sendline("!reset")
        assert "forgotten" in session.expect(r"rag> ", timeout=60)
        # A person presses Ctrl-C a moment after the prompt shows. Sent at once, the SIGINT can land after the
        # prompt is written but before readline waits on the terminal: Python's handler runs, readline's select
        # is never interrupted, and the REPL waits for a key (a CPython/readline race, not the REPL's).
        time.sleep(1.0)
        session.send_control("c")
        assert session.wait(120) == 0 and session.text.rstrip().endswith("bye")


def test_repl_leaves_cleanly_at_end_of_input_and_on_quit(agent):
    from rich.console import Console

    def typed(*lines):
        queue = list(lines)

        def read(prompt: str) -> str:
            if not queue:
                raise EOFError
            return queue.pop(0)

        return read

    console = Console(record=True, width=100)
    assert repl(agent, console, typed("!bogus", "", "!search")) == 0
    text = console.export_text()
    assert "Unknown command !bogus; type !help" in text and "Usage: !search <term>" in text and text.rstrip().endswith("bye")
    assert repl(agent, console, typed("!quit", "never read")) == 0
