"""RAG chat Space: a chat over the FAISS-indexed passages whose answers show their source fragment and score
(or say "not found in the fragments"), sends `!search term` to the MOCK web_search tool, and remembers the last
3 exchanges — per browser session — so that follow-up questions find their topic.

It drives `pocketlm.rag.chain.RagAgent` (retriever with its query adapter → extractive reader, with the
LoRA-tuned generator's answer beside it), the agent the REPL (`python -m pocketlm.rag`) runs. The models are loaded
once and shared; each session has its own conversation memory (a `WindowedChatHistory` in `gr.State`),
handed to the agent for the duration of its request.

Users can add their own documents (text, Markdown, HTML, PDF: `pocketlm.rag.documents`) by upload. They go
into the session's own copy of the index — other sessions never see them — swapped in for its requests
like the memory; files refused (wrong type, binary, malformed, too large) are listed by name.
"""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any

import gradio as gr

from pocketlm import MINILM_SQUAD, RAG_INDEX, TINY_LM_RAG_LORA
from pocketlm.rag.answer import ABSTAIN_BELOW
from pocketlm.rag.commands import CommandError, help_text, parse_command
from pocketlm.rag.documents import FORMATS, DocumentLimits
from pocketlm.serving.schemas import MAX_QUESTION_CHARS
from pocketlm.spaces import SPACE_TITLES
from pocketlm.spaces.common import ComputeGuard, LoadOnce, local_folder, standalone
from pocketlm.spaces.examples import CHAT_EXAMPLES

TITLE = SPACE_TITLES["rag_chat"]
HELP = help_text(markdown=True)
DOCUMENT_LIMITS = DocumentLimits()
UPLOAD_BYTES = DOCUMENT_LIMITS.max_file_bytes
"""Gradio's `max_file_size` on a page with this Space (every other page keeps uploads closed)."""


class RagChat(LoadOnce[Any]):
    """The RAG agent, loaded once (torch, transformers, FAISS, LangChain: seconds) and shared by all sessions."""

    def __init__(self, index: str = RAG_INDEX, generator: str | None = TINY_LM_RAG_LORA, base: str | None = None,
                 reader: str = MINILM_SQUAD, abstain_below: float = ABSTAIN_BELOW):
        super().__init__(lambda: self._load())
        self.index, self.generator, self.base = index, generator, base
        self.reader, self.abstain_below = reader, abstain_below
        self._turn = threading.Lock()
        self.shared_retriever = None

    def _load(self):
        from pocketlm.rag.chain import RagAgent

        # The LoRA goes by id: `load_generator` resolves it, and falls back to the base LM when the default
        # LoRA is not built (the description then says "no LoRA"). `base` None: the base the LoRA names.
        agent = RagAgent.from_pretrained(local_folder(self.index), lora=self.generator or "none", base=self.base,
                                         reader=local_folder(self.reader), abstain_below=self.abstain_below)
        self.shared_retriever = agent.retriever
        return agent

    def new_memory(self):
        from pocketlm.rag.chain import WindowedChatHistory

        return WindowedChatHistory()

    def ask(self, memory, question: str, retriever=None):
        """`agent.ask` with this session's memory and index (swapped in for the call; None: the shared index)."""
        agent = self.load()
        with self._turn:
            agent.memory = memory
            agent.retriever = retriever or self.shared_retriever
            return agent.ask(question)

    def add_documents(self, retriever, files: list[tuple[str, Path]]):
        """Index uploads into a new copy of the session's index (None: of the shared one); returns the copy and the
        batch. A shallow copy is enough — adding builds new FAISS and BM25 objects — and the index a question of
        the session may be searching right now is never changed under it."""
        from pocketlm.rag.documents import add_documents

        self.load()
        retriever = copy.copy(retriever or self.shared_retriever)
        return retriever, add_documents(retriever, files, DOCUMENT_LIMITS)

    def search(self, term: str):
        return self.load().search(term)


def answer_markdown(answer) -> str:
    """The chat reply: the answer with its source and score (or the abstention), then the generator's text."""
    if answer.abstained:
        head = f"🤷 {answer.to_text()}"
    else:
        head = f"**{answer.answer}**  \nsource: **[{answer.source.id}]** *{answer.source.title}* · reader score {answer.score:.3f}"
    return f"{head}  \n_generator:_ {answer.generated_text()}"


def fragments_markdown(fragments, cited: list[str], heading: str) -> str:
    if not fragments:
        return f"**{heading}:** none"
    lines = [f"**{heading}** (✅ = the answer is found in it):"]
    for fragment in fragments:
        mark = "✅" if fragment.id in cited else "▫️"
        lines.append(f"{mark} **[{fragment.id}]** *{fragment.title}* · score {fragment.score:.2f}  \n{fragment.text}")
    return "\n\n".join(lines)


def documents_markdown(batch, retriever) -> str:
    """What an upload gave (files indexed, files refused and why), then every document this session holds."""
    from pocketlm.rag.documents import document_name

    lines = [f"✅ **{name}**" for name in batch.files] + [f"❌ **{r.name}**: {r.reason}" for r in batch.refused]
    held = sorted({name for p in retriever.index.passages if (name := document_name(p.id))}) if retriever else []
    passages = len(retriever.index.passages) if retriever else 0
    lines.append(f"_This session's documents: {', '.join(held) or 'none'} ({passages} passages in its index)._")
    return "  \n".join(lines)


def memory_markdown(memory) -> str:
    exchanges = memory.exchanges() if memory is not None else []
    if not exchanges:
        return "_Memory: empty._"
    lines = [f"**Memory** ({len(exchanges)} of at most 3 exchanges, oldest first):"]
    lines += [f"{i}. Q: {q} → A: {a}" for i, (q, a) in enumerate(exchanges, 1)]
    return "\n".join(lines)


def answer_sources_markdown(chat: RagChat, answer) -> str:
    """The side panel after an answer: which agent answered, what was searched, the fragments it read."""
    heading = "MOCK web_search results used" if answer.web_search else "Retrieved fragments"
    searched = f"Searched as: _{answer.query}_\n\n" if answer.query != answer.question and not answer.web_search else ""
    return f"Answered by `{chat.load().description}`.\n\n{searched}" + fragments_markdown(answer.fragments, answer.cited, heading)


def render(chat: RagChat, guard: ComputeGuard | None = None) -> None:
    """Lay the Space out in the current Blocks context; its event is the API endpoint `/chat`."""
    guard = guard or ComputeGuard()
    gr.Markdown(
        f"Chat with the RAG agent over `{chat.index}`: the answer is a span of a fragment found by the reader `{chat.reader}`, "
        f"shown with its source and score, or *not found in the fragments*; the tiny LM + `{chat.generator or 'no LoRA'}` "
        "answers beside it. `!search term` calls the **MOCK** web_search tool; the last 3 exchanges are remembered, "
        "so a follow-up question finds its topic. `!help` for more."
    )
    memory = gr.State(None)
    documents = gr.State(None)  # the session's own index once it has added documents (None: the shared one)
    with gr.Row():
        with gr.Column(scale=3):
            chatbot = gr.Chatbot(label="Chat", height=430, elem_id="rag-chatbot")
            message = gr.Textbox(label="Message", placeholder="Ask a question, or !search a term — Enter sends",
                                 elem_id="rag-message")
            with gr.Row():
                send = gr.Button("Send", variant="primary", elem_id="rag-submit")
                reset = gr.Button("Reset the conversation")
        with gr.Column(scale=2):
            fragments = gr.Markdown("_The fragments of the last answer appear here._", elem_id="rag-fragments")
            remembered = gr.Markdown("_Memory: empty._", elem_id="rag-memory")
            with gr.Accordion("Your documents", open=False):
                uploads = gr.File(label=f"Add documents ({', '.join(sorted(FORMATS))}; {DOCUMENT_LIMITS.describe()})",
                                  file_count="multiple", type="filepath", elem_id="rag-uploads")
                add = gr.Button("Add to the index", elem_id="rag-add-documents")
                indexed = gr.Markdown("_Only this session sees the documents it adds; answers cite them as FILE#N._",
                                      elem_id="rag-documents")
    gr.Examples([[example] for example in CHAT_EXAMPLES], [message], example_labels=CHAT_EXAMPLES)

    async def respond(text: str, history: list, session_memory, session_documents):
        text = (text or "").strip()
        if not text:
            raise gr.Error("Message: must not be empty", title="Please check the input")
        if len(text) > MAX_QUESTION_CHARS:
            raise gr.Error(f"Message: at most {MAX_QUESTION_CHARS} characters (got {len(text)})", title="Please check the input")
        try:
            command = parse_command(text)
        except CommandError as error:
            raise gr.Error(str(error), title="Please check the input") from None
        await chat.loaded_value("the RAG agent")
        session_memory = session_memory if session_memory is not None else chat.new_memory()
        shown = gr.update()
        if command.name == "search":
            response = await guard.call(chat.search, command.argument)
            reply = response.to_text()
            shown = fragments_markdown(response.fragments(), [], "MOCK web_search results")
        elif command.name == "reset":
            session_memory.clear()
            reply = "Conversation forgotten."
        elif command.name == "help":
            reply = HELP
        else:
            answer = await guard.call(chat.ask, session_memory, command.argument, session_documents)
            reply, shown = answer_markdown(answer), answer_sources_markdown(chat, answer)
        history = [*(history or []), {"role": "user", "content": text}, {"role": "assistant", "content": reply}]
        return "", history, session_memory, shown, memory_markdown(session_memory)

    outputs = [message, chatbot, memory, fragments, remembered]
    gr.on([send.click, message.submit], respond, [message, chatbot, memory, documents], outputs, api_name="chat")

    async def add_uploads(paths: list[str] | None, session_documents):
        if not paths:
            raise gr.Error("Documents: choose one or more files first", title="Please check the input")
        await chat.loaded_value("the RAG agent")
        files = [(Path(path).name, Path(path)) for path in paths]
        # a limit refusing the whole batch (a `DocumentError`) becomes the page's error message
        session_documents, batch = await guard.call(chat.add_documents, session_documents, files)
        return None, session_documents, documents_markdown(batch, session_documents)

    add.click(add_uploads, [uploads, documents], [uploads, documents, indexed], api_name="add_documents")

    def forget(session_memory):
        if session_memory is not None:
            session_memory.clear()
        return [], session_memory, "_The fragments of the last answer appear here._", memory_markdown(session_memory)

    reset.click(forget, [memory], [chatbot, memory, fragments, remembered], api_name="reset_chat")


def build(chat: RagChat, guard: ComputeGuard | None = None) -> gr.Blocks:
    return standalone(TITLE, render, chat, guard)


def from_args(args, folders: dict) -> gr.Blocks:
    """The Space of `spaces/rag_chat/app.py`: the agent is loaded before the page opens."""
    chat = from_fetched(args, folders)
    chat.load()
    return build(chat)


def from_fetched(args, folders: dict) -> RagChat:
    """The agent by the ids the page shows (each already fetched into the cache or found on disk); the
    default LoRA left out when it was not there."""
    return RagChat(args.rag_index, args.rag_generator if folders["rag_generator"] else None, base=args.rag_base,
                   reader=args.rag_reader, abstain_below=args.rag_abstain_below)
