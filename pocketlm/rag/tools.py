"""A MOCK `web_search` tool: deterministic, offline, bounded in time — it never touches the network.

It stands in for a real search API so the agent's tool path can be exercised and tested here: it ranks a
fixed local "web" (the lead paragraph of each WikiText-2 article in the data mirror) by how many of the
query's content words each page shares, ties broken by page id, so the same query always gives the same
results. Every result says it comes from the mock, and the search stops at its deadline (returning what it
has, marked as truncated): a slow tool must not hang the REPL.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from pocketlm.rag.prompt import Fragment, content_words

MOCK_LABEL = "MOCK web_search (offline, deterministic: a fixed local page set, not the internet)"
MOCK_URL = "https://mock-search.invalid/wiki/"
PAGES_FILE = Path(__file__).with_name("mock_web_pages.json")
"""The page set a staged Space carries inside its `pocketlm` package (`pocketlm.spaces.stage` writes it from
the mirror): a Space has no data mirror beside it. A checkout has no such file and reads the mirror."""


@dataclass(frozen=True)
class SearchResult:
    id: str
    title: str
    url: str
    snippet: str
    score: int


@dataclass(frozen=True)
class SearchResponse:
    query: str
    results: list[SearchResult]
    truncated: bool
    """True when the deadline stopped the scan before every page was scored."""
    elapsed_s: float

    def to_text(self) -> str:
        lines = [f"[{MOCK_LABEL}] results for {self.query!r}:"]
        lines += [f"{i}. [{r.id}] {r.title} — {r.url}\n   {r.snippet}" for i, r in enumerate(self.results, 1)]
        if not self.results:
            lines.append("(no results)")
        if self.truncated:
            lines.append("(stopped at the time limit; results may be incomplete)")
        return "\n".join(lines)

    def fragments(self) -> list[Fragment]:
        """The results as prompt fragments (ids `web-1`, `web-2`...), so answers can cite them."""
        return [Fragment(r.id, r.title, r.snippet, float(r.score)) for r in self.results]


def default_pages(max_words: int = 80) -> list[tuple[str, str]]:
    """(title, lead paragraph) of every WikiText-2 article: from `PAGES_FILE` where a staged Space carries it,
    else from the mirror; empty if neither is there."""
    if PAGES_FILE.is_file():
        return [(title, " ".join(text.split()[:max_words])) for title, text in json.loads(PAGES_FILE.read_text("utf-8"))]
    from pocketlm.data import corpus_folder
    from pocketlm.errors import PocketLMError

    try:
        folder = corpus_folder()
    except PocketLMError:
        return []
    pages = []
    for path in sorted(folder.glob("*.txt")):
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        lead = next((line for line in lines[1:] if not line.startswith("=") and len(line.split()) >= 20), "")
        if lines and lead:
            pages.append((lines[0], " ".join(lead.split()[:max_words])))
    return pages


class MockWebSearch:
    """Rank a fixed page set by shared content words with the query; stop at `timeout_s`."""

    def __init__(self, pages: list[tuple[str, str]] | None = None, max_results: int = 3, timeout_s: float = 2.0):
        self.pages = default_pages() if pages is None else pages
        self.max_results = max_results
        self.timeout_s = timeout_s
        self._words = [content_words(f"{title} {title} {text}") for title, text in self.pages]
        self.calls: list[str] = []
        """Every query this tool was asked, in order (what the tests and the REPL's log look at)."""

    def __call__(self, query: str) -> SearchResponse:
        self.calls.append(query)
        started = time.perf_counter()
        deadline = started + self.timeout_s
        wanted = content_words(query)
        scored, truncated = [], False
        for page_no, words in enumerate(self._words):
            if time.perf_counter() > deadline:
                truncated = True
                break
            score = len(wanted & words)
            if score:
                scored.append((-score, page_no))
        results = []
        for rank, (neg_score, page_no) in enumerate(sorted(scored)[: self.max_results], 1):
            title, text = self.pages[page_no]
            results.append(SearchResult(f"web-{rank}", title, MOCK_URL + title.replace(" ", "_"), text, -neg_score))
        return SearchResponse(query, results, truncated, time.perf_counter() - started)


def web_search_tool(search: MockWebSearch):
    """The mock as a LangChain tool named `web_search` (its description says it is a mock).

    It answers a tool call with a `ToolMessage` whose content is the text an LLM would read and whose
    artifact is the `SearchResponse` (LangChain's content-and-artifact format), so the agent gets ids to cite.
    """
    from langchain_core.tools import StructuredTool

    def web_search(query: str) -> tuple[str, SearchResponse]:
        response = search(query)
        return response.to_text(), response

    return StructuredTool.from_function(
        func=web_search,
        response_format="content_and_artifact",
        name="web_search",
        description=f"{MOCK_LABEL}. Searches a fixed offline page set for the query and returns up to "
        f"{search.max_results} pages with ids, titles, URLs and snippets.",
    )
