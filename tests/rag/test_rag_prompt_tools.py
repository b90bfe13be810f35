"""The modular prompt and its cropping, and the mock web_search tool (deterministic, labelled, time-bounded)."""

from __future__ import annotations

from pocketlm.rag.prompt import INSTRUCTIONS, Fragment, crop_to_question, format_history, render_prompt
from pocketlm.rag.tools import MOCK_LABEL, MockWebSearch, web_search_tool

PAGES = [
    ("Du Fu", "Du Fu was a prominent Chinese poet of the Tang dynasty, often called the greatest of Chinese poets."),
    ("Li Bai", "Li Bai was a Chinese poet of the Tang dynasty, celebrated for his romantic verse."),
    ("Ise-class battleship", "The Ise class were two battleships of the Imperial Japanese Navy."),
]


def words(text: str) -> int:
    return len(text.split())


def test_prompt_has_four_sections_with_fragment_ids_in_order():
    fragments = [Fragment("val-00-001", "Super_Bowl_50", "Denver won."), Fragment("wiki-003-004", "Du Fu", "A poet.")]
    prompt = render_prompt("Who won?", fragments, [("Where?", "Santa Clara")])
    assert prompt.startswith(INSTRUCTIONS)
    assert prompt.index("[val-00-001] Denver won.") < prompt.index("[wiki-003-004] A poet.") < prompt.index("Q: Where?\nA: Santa Clara")
    assert prompt.endswith("Question: Who won?\nAnswer:")
    assert format_history([]) == ""


def test_crop_keeps_the_sentences_that_match_the_question_within_budget():
    text = "The weather was mild. The Broncos beat the Panthers in Santa Clara. Tickets were expensive. Gold was everywhere."
    cropped = crop_to_question(text, "Which team did the Broncos beat?", 12, words)
    assert "Broncos beat the Panthers" in cropped and words(cropped) <= 12
    assert crop_to_question("short text", "anything", 12, words) == "short text"
    assert words(crop_to_question("one very long sentence " * 10, "long", 5, words)) <= 5


def test_mock_web_search_is_deterministic_labelled_and_ranked():
    search = MockWebSearch(PAGES)
    first, second = search("Tang dynasty poet"), search("Tang dynasty poet")
    assert first.results == second.results
    assert [r.title for r in first.results][:2] == ["Du Fu", "Li Bai"]
    assert [r.id for r in first.results] == ["web-1", "web-2"]  # the battleship shares no word
    assert MOCK_LABEL in first.to_text() and "mock-search.invalid" in first.to_text()
    assert search.calls == ["Tang dynasty poet", "Tang dynasty poet"]
    assert search("zzz qqq").results == []


def test_mock_web_search_stops_at_its_time_limit():
    search = MockWebSearch(PAGES * 1000, timeout_s=0.0)
    response = search("Tang dynasty poet")
    assert response.truncated and "time limit" in response.to_text()
    assert response.elapsed_s < 0.5


def test_web_search_is_a_langchain_tool_returning_structured_results():
    search = MockWebSearch(PAGES)
    tool = web_search_tool(search)
    assert tool.name == "web_search" and "MOCK" in tool.description
    message = tool.invoke({"name": "web_search", "args": {"query": "battleship"}, "id": "call-1", "type": "tool_call"})
    assert "Ise-class battleship" in message.content
    assert message.artifact.fragments()[0].id == "web-1"
    assert search.calls == ["battleship"]
