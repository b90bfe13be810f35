"""The RAG agent: retriever → modular prompt → LoRA-tuned generator, as a LangChain LCEL chain, with memory.

Why LCEL (`prompt | llm`) and not `LLMChain`: `LLMChain` survives in LangChain 1.x only in
`langchain-classic`, deprecated since 0.1.17 in favour of exactly this composition; LCEL runnables batch,
stream and trace the same way, and the chain here is a plain pipe: `PromptTemplate | HuggingFacePipeline`,
run side by side with the rendered prompt (`RunnableParallel`) so callers (and tests) see what the model
was given.

Memory: a `langchain_core` chat history that keeps at most the last 3 exchanges — trimmed on every write,
so it never holds more (LangChain's old `ConversationBufferWindowMemory` only *shows* the last k while its
store grows without bound).

Tool: the mock `web_search` (`pocketlm.rag.tools`), called as a LangChain tool — by `search(term)` (the
REPL's `!search`) and by `ask` when the question asks to search the web ("search the web for ...");
its results then stand in for the retrieved fragments, with ids `web-1`, `web-2`... to cite.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from langchain_core.chat_history import InMemoryChatMessageHistory
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from pocketlm import RAG_INDEX, TINY_LM_RAG_LORA
from pocketlm.rag.generator import ANSWER_TOKENS, build_prompt, clean_answer, context_length
from pocketlm.rag.lexical import HYBRID_WEIGHT
from pocketlm.rag.prompt import Fragment, format_fragments, format_history, prompt_template
from pocketlm.rag.tools import MockWebSearch, SearchResponse, web_search_tool

if TYPE_CHECKING:
    from pocketlm.rag.retriever import RagRetriever

MAX_EXCHANGES = 3
_WEB_REQUEST = re.compile(r"^\s*(?:please\s+)?(?:search|look\s+up)\s+(?:the\s+web|online|the\s+internet)\s+(?:for\s+)?(?P<query>.+)$", re.I)


class WindowedChatHistory(InMemoryChatMessageHistory):
    """A chat history that keeps only the last `max_exchanges` (question, answer) exchanges."""

    max_exchanges: int = MAX_EXCHANGES

    def add_message(self, message: BaseMessage) -> None:
        super().add_message(message)
        excess = len(self.messages) - 2 * self.max_exchanges
        if excess > 0:
            del self.messages[:excess]

    def exchanges(self) -> list[tuple[str, str]]:
        pairs = zip(self.messages[0::2], self.messages[1::2])
        return [(str(q.content), str(a.content)) for q, a in pairs]


@dataclass
class AgentAnswer:
    question: str
    answer: str
    fragments: list[Fragment]
    """What the model was shown (cropped), in prompt order."""
    cited: list[str]
    """Ids of the fragments the answer comes from: those containing it verbatim, else none."""
    prompt: str
    web_search: SearchResponse | None = None

    def to_text(self) -> str:
        answer = self.answer or "(no answer)"
        if self.cited:
            sources = f"[sources: {', '.join(self.cited)}]"
        else:
            sources = f"[not found verbatim in the fragments; retrieved: {', '.join(f.id for f in self.fragments) or 'none'}]"
        return f"{answer} {sources}"


def cite(answer: str, fragments: Sequence[Fragment]) -> list[str]:
    """Fragments that contain the answer (case-insensitive): an extractive answer names where it came from."""
    needle = answer.strip().lower().rstrip(".")
    if len(needle) < 2:
        return []
    return [f.id for f in fragments if needle in f.text.lower()]


def web_query(question: str) -> str | None:
    """The query of a "search the web for X" question, or None."""
    match = _WEB_REQUEST.match(question)
    return match.group("query").strip(" ?.") if match else None


@dataclass
class RagAgent:
    """Ask questions (RAG + LLM, citing fragment ids), run the mock web search, keep 3 exchanges of memory.

    The small API the REPL and the Gradio "RAG chat" Space share: `ask`, `search`, `reset`, `history`.
    """

    retriever: "RagRetriever"
    model: object
    tokenizer: object
    k: int = 3
    web: MockWebSearch = field(default_factory=MockWebSearch)
    description: str = ""
    memory: WindowedChatHistory = field(default_factory=WindowedChatHistory)

    def __post_init__(self) -> None:
        from langchain_core.output_parsers import StrOutputParser
        from langchain_core.runnables import RunnableLambda, RunnableParallel
        from langchain_huggingface import HuggingFacePipeline
        from transformers import pipeline

        generate = pipeline(
            "text-generation", model=self.model, tokenizer=self.tokenizer, max_new_tokens=ANSWER_TOKENS,
            do_sample=False, return_full_text=False, pad_token_id=self.tokenizer.pad_token_id,
        )
        self.llm = HuggingFacePipeline(pipeline=generate)
        self.tool = web_search_tool(self.web)
        self.chain = prompt_template() | RunnableParallel(
            prompt=RunnableLambda(lambda value: value.to_string()), answer=self.llm | StrOutputParser()
        )
        self.max_prompt_tokens = context_length(self.model) - ANSWER_TOKENS

    @classmethod
    def from_pretrained(
        cls, index: str = RAG_INDEX, lora: str | None = TINY_LM_RAG_LORA, base: str | None = None,
        index_type: str = "flat", use_adapter: bool = True, k: int = 3, lexical_weight: float = HYBRID_WEIGHT,
    ) -> RagAgent:
        """`lexical_weight`: BM25's weight in the hybrid retriever (0: dense only)."""
        from pocketlm.rag.generator import load_generator
        from pocketlm.rag.retriever import RagRetriever

        retriever = RagRetriever.from_pretrained(index, index_type=index_type, use_adapter=use_adapter, lexical_weight=lexical_weight)
        model, tokenizer, description = load_generator(lora, base)
        return cls(retriever, model, tokenizer, k=k, description=description)

    @property
    def history(self) -> list[tuple[str, str]]:
        return self.memory.exchanges()

    def reset(self) -> None:
        self.memory.clear()

    def search(self, term: str) -> SearchResponse:
        """Run the mock `web_search` tool through LangChain; the response carries the structured results."""
        message = self.tool.invoke({"name": "web_search", "args": {"query": term}, "id": f"call-{len(self.web.calls)}", "type": "tool_call"})
        return message.artifact

    def ask(self, question: str) -> AgentAnswer:
        question = " ".join(question.split())
        term = web_query(question)
        response = self.search(term) if term else None
        fragments = response.fragments() if response else self.retriever.retrieve(question, self.k)
        fitted = build_prompt(self.tokenizer, question, fragments, self.history, self.max_prompt_tokens)
        inputs = {"fragments": format_fragments(fitted.fragments), "history": format_history(fitted.history), "question": question}
        out = self.chain.invoke(inputs)
        answer = clean_answer(out["answer"])
        self.memory.add_messages([HumanMessage(question), AIMessage(answer)])
        return AgentAnswer(question, answer, fitted.fragments, cite(answer, fitted.fragments), out["prompt"], response)
