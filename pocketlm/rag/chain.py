"""The RAG agent: retriever → extractive reader (the answer, its source and score) and, beside it, the modular
prompt → LoRA-tuned generator as a LangChain LCEL chain; with memory and follow-up questions.

Answers: the reader's best span over the top-k fragments, or an honest "not found in the fragments" under a
score threshold chosen on dev data (`pocketlm.rag.answer`). The generator's text is offered beside it: the
tiny LM alone is not a reliable reader. Follow-ups ("Where was the game played?") are searched with terms of
the last exchanges (`pocketlm.rag.conversation`).

Why LCEL (`prompt | llm`) and not `LLMChain`: `LLMChain` survives in LangChain 1.x only in
`langchain-classic`, deprecated since 0.1.17 in favour of exactly this composition; LCEL runnables batch,
stream and trace the same way, and the chain here is a plain pipe: `PromptTemplate | HuggingFacePipeline`,
run side by side with the rendered prompt (`RunnableParallel`) so callers (and tests) see what the model
was given.

Memory: a `langchain_core` chat history that keeps at most the last 3 exchanges — trimmed on every write,
so it never holds more (LangChain's old `ConversationBufferWindowMemory` only *shows* the last k while its
store grows without bound).

Tool: the mock `web_search` (`pocketlm.rag.tools`), called as a LangChain tool — by `search(term)` (the
REPL's `!search`) and by `answer`/`ask` when the question asks to search the web ("search the web for ...");
its results then stand in for the retrieved fragments, with ids `web-1`, `web-2`... to cite.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from langchain_core.chat_history import InMemoryChatMessageHistory
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from pocketlm import MINILM_SQUAD, RAG_INDEX, TINY_LM_RAG_LORA
from pocketlm.rag.answer import ABSTAIN_BELOW, NO_SPAN, RETRIEVAL_WEIGHT, ReaderSpan, read_fragments, select_span
from pocketlm.rag.conversation import contextual_query, merge_retrievals
from pocketlm.rag.generator import ANSWER_TOKENS, build_prompt, clean_answer, context_length
from pocketlm.rag.lexical import HYBRID_WEIGHT
from pocketlm.rag.prompt import Fragment, format_fragments, format_history, prompt_template
from pocketlm.rag.tools import MockWebSearch, SearchResponse, web_search_tool

if TYPE_CHECKING:
    from pocketlm.rag.retriever import RagRetriever

MAX_EXCHANGES = 3
NOT_FOUND = "not found in the fragments"
"""What the memory (and so the next prompt) keeps as the answer of an exchange where the agent abstained."""
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
    """One answer of the agent, everything a front end (REPL, chat Space, REST API) shows or returns.

    `answer` is what the user reads: the extractive reader's span (`pocketlm.rag.answer`), or "" when the
    agent abstained (its best score was under `threshold`); the span it withheld stays in `span`.
    """

    question: str
    answer: str
    fragments: list[Fragment]
    """The retrieved fragments, best first, in full (the reader reads them whole; the generator's prompt crops them)."""
    cited: list[str]
    """Ids of the fragments holding the answer: the span's own fragment first, then any other containing it."""
    prompt: str
    """The generator's prompt."""
    generated: str = ""
    """The generator's (tiny LM + LoRA) answer to the same prompt, offered beside the reader's."""
    span: ReaderSpan = NO_SPAN
    """The chosen span (kept when the agent abstained: the best guess it withheld)."""
    candidates: list[ReaderSpan] = field(default_factory=list)
    """The reader's best span in each fragment, in fragment order (`span` is one of them)."""
    threshold: float = ABSTAIN_BELOW
    query: str = ""
    """What was searched: the question, or the question with terms of the conversation when it leans on it."""
    web_search: SearchResponse | None = None

    @property
    def abstained(self) -> bool:
        return not self.answer

    @property
    def score(self) -> float:
        return self.span.score

    @property
    def source(self) -> Fragment | None:
        """The fragment the answer comes from (None when the agent abstained)."""
        return None if self.abstained else self.span.fragment

    def to_text(self) -> str:
        """One line: the answer with its source and score, or the abstention with the reader's best guess."""
        if not self.abstained:
            source = self.span.fragment
            return f"{self.answer} [source: {source.id} ({source.title}), score {self.score:.3f}]"
        retrieved = ", ".join(f.id for f in self.fragments) or "none"
        guess = (f'; best guess "{self.span.text}" from {self.span.fragment.id}, score {self.score:.3f} < {self.threshold:.3f}'
                 if self.span.fragment is not None else "")
        return f"Not found in the fragments{guess} [retrieved: {retrieved}]"

    def generated_text(self) -> str:
        """The generator's answer and whether the fragments hold it verbatim."""
        found = cite(self.generated, self.fragments)
        where = f"found in {', '.join(found)}" if found else "not found verbatim in the fragments"
        return f"{self.generated or '(nothing)'} [{where}]"

    def to_dict(self) -> dict:
        """A JSON-ready record (what an API returns)."""
        source = self.source
        return {
            "question": self.question, "answer": self.answer, "score": round(self.score, 4), "abstained": self.abstained,
            "threshold": self.threshold, "source": None if source is None else {"id": source.id, "title": source.title},
            "span": {"text": self.span.text, "start": self.span.start, "end": self.span.end,
                     "fragment_id": self.span.fragment.id if self.span.fragment else None},
            "cited": self.cited, "generated": self.generated, "query": self.query,
            "fragments": [{"id": f.id, "title": f.title, "text": f.text, "score": round(f.score, 4)} for f in self.fragments],
            "web_search": self.web_search is not None,
        }


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
    """Answer questions from the retrieved fragments (extractive reader, with source and score; the generator's
    text beside it), follow the conversation, run the mock web search, keep 3 exchanges of memory.

    The API the REPL, the Gradio "RAG chat" Space and the REST server share: `answer` (stateless: the history
    is passed in), `ask` (`answer` with the agent's own memory, then remembered), `search`, `reset`, `history`.
    """

    retriever: "RagRetriever"
    model: object
    tokenizer: object
    reader: object = None
    """An extractive `QuestionAnswerer` (`pocketlm.inference.qa_engine`); the answers come from it."""
    k: int = 3
    abstain_below: float = ABSTAIN_BELOW
    retrieval_weight: float = RETRIEVAL_WEIGHT
    """How much the fragment's retrieval score counts when choosing among the fragments' spans (`select_span`)."""
    conversation_aware: bool = True
    """Search a follow-up question with terms of the conversation (`pocketlm.rag.conversation`)."""
    web: MockWebSearch = field(default_factory=MockWebSearch)
    description: str = ""
    memory: WindowedChatHistory = field(default_factory=WindowedChatHistory)

    def __post_init__(self) -> None:
        from langchain_core.output_parsers import StrOutputParser
        from langchain_core.runnables import RunnableLambda, RunnableParallel
        from langchain_huggingface import HuggingFacePipeline
        from transformers import pipeline

        if self.reader is None:
            raise ValueError("RagAgent needs an extractive reader (a QuestionAnswerer): the answers come from it")
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
        reader: str = MINILM_SQUAD, abstain_below: float = ABSTAIN_BELOW, conversation_aware: bool = True,
    ) -> RagAgent:
        """`lexical_weight`: BM25's weight in the hybrid retriever (0: dense only); `reader`: the extractive QA model."""
        from pocketlm.inference.qa_torch import TorchQuestionAnswerer
        from pocketlm.rag.generator import load_generator
        from pocketlm.rag.retriever import RagRetriever

        retriever = RagRetriever.from_pretrained(index, index_type=index_type, use_adapter=use_adapter, lexical_weight=lexical_weight)
        qa = TorchQuestionAnswerer.from_pretrained(reader)
        model, tokenizer, description = load_generator(lora, base)
        return cls(retriever, model, tokenizer, qa, k=k, abstain_below=abstain_below, conversation_aware=conversation_aware,
                   description=f"reader {reader}; generator {description}")

    @property
    def history(self) -> list[tuple[str, str]]:
        return self.memory.exchanges()

    def reset(self) -> None:
        self.memory.clear()

    def search(self, term: str) -> SearchResponse:
        """Run the mock `web_search` tool through LangChain; the response carries the structured results."""
        message = self.tool.invoke({"name": "web_search", "args": {"query": term}, "id": f"call-{len(self.web.calls)}", "type": "tool_call"})
        return message.artifact

    def retrieval_query(self, question: str, history: Sequence[tuple[str, str]] = ()) -> str:
        """What the retriever is asked for `question` after `history`."""
        return contextual_query(question, history) if self.conversation_aware else question

    def retrieve(self, question: str, history: Sequence[tuple[str, str]] = (), k: int | None = None) -> tuple[str, list[Fragment]]:
        """The query searched for `question` after `history`, and the top k fragments (default `self.k`): for a
        question that leans on the conversation, `merge_retrievals` of that query's and the question's own."""
        k = k or self.k
        query = self.retrieval_query(question, history)
        fragments = self.retriever.retrieve(query, k)
        if query != question:
            fragments = merge_retrievals(fragments, self.retriever.retrieve(question, k), k)
        return query, fragments

    def answer(self, question: str, history: Sequence[tuple[str, str]] = ()) -> AgentAnswer:
        """Answer `question` after `history` ((question, answer) pairs, oldest first; at most the last 3 are
        used) without touching the agent's memory: retrieve the top k, read them, generate beside."""
        question = " ".join(question.split())
        history = list(history)[-MAX_EXCHANGES:]
        term = web_query(question)
        response = self.search(term) if term else None
        query, fragments = (term, response.fragments()) if response else self.retrieve(question, history)
        candidates = read_fragments(self.reader, question, fragments)
        span = select_span(candidates, self.retrieval_weight)
        answer = span.text if span.fragment is not None and span.score >= self.abstain_below else ""
        cited = [] if not answer else [span.fragment.id, *(i for i in cite(answer, fragments) if i != span.fragment.id)]
        fitted = build_prompt(self.tokenizer, question, fragments, history, self.max_prompt_tokens)
        inputs = {"fragments": format_fragments(fitted.fragments), "history": format_history(fitted.history), "question": question}
        out = self.chain.invoke(inputs)
        return AgentAnswer(question, answer, list(fragments), cited, out["prompt"], clean_answer(out["answer"]), span,
                           candidates, self.abstain_below, query, response)

    def ask(self, question: str) -> AgentAnswer:
        """`answer` with the agent's memory as the history; the exchange is then remembered."""
        result = self.answer(question, self.history)
        self.memory.add_messages([HumanMessage(result.question), AIMessage(result.answer or NOT_FOUND)])
        return result
