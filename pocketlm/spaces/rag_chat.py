"""RAG chat Space: a chat over the FAISS-indexed passages whose answers show their source fragment and score
(or say "not found in the fragments"), sends `!search term` to the MOCK web_search tool, and remembers the last
3 exchanges — per browser session — so that follow-up questions find their topic.

It drives `pocketlm.rag.chain.RagAgent` (retriever with its query adapter → extractive reader, with the
LoRA-tuned generator's answer beside it), the agent the REPL (`python -m pocketlm.rag`) runs. The models are loaded
once and shared; each session has its own conversation memory (a `WindowedChatHistory` in `gr.State`),
handed to the agent for the duration of its request.
"""

from __future__ import annotations

import threading
from typing import Any

import gradio as gr

from pocketlm import MINILM_SQUAD, RAG_INDEX, TINY_LM_RAG_LORA
from pocketlm.rag.answer import ABSTAIN_BELOW
from pocketlm.rag.commands import CommandError, help_text, parse_command
from pocketlm.serving.schemas import MAX_QUESTION_CHARS
from pocketlm.spaces import SPACE_TITLES
from pocketlm.spaces.common import ComputeGuard, LoadOnce, local_folder, standalone
from pocketlm.spaces.examples import CHAT_EXAMPLES

TITLE = SPACE_TITLES["rag_chat"]
HELP = help_text(markdown=True)


class RagChat(LoadOnce[Any]):
    """The RAG agent, loaded once (torch, transformers, FAISS, LangChain: seconds) and shared by all sessions."""

    def __init__(self, index: str = RAG_INDEX, generator: str | None = TINY_LM_RAG_LORA, base: str | None = None,
                 reader: str = MINILM_SQUAD, abstain_below: float = ABSTAIN_BELOW):
        super().__init__(lambda: self._load())
        self.index, self.generator, self.base = index, generator, base
        self.reader, self.abstain_below = reader, abstain_below
        self._turn = threading.Lock()

    def _load(self):
        from pocketlm.rag.chain import RagAgent

        # The LoRA goes by id: `load_generator` resolves it, and falls back to the base LM when the default
        # LoRA is not built (the description then says "no LoRA"). `base` None: the base the LoRA names.
        return RagAgent.from_pretrained(local_folder(self.index), lora=self.generator or "none", base=self.base,
                                        reader=local_folder(self.reader), abstain_below=self.abstain_below)

    def new_memory(self):
        from pocketlm.rag.chain import WindowedChatHistory

        return WindowedChatHistory()

    def ask(self, memory, question: str):
        """`agent.ask` with this session's memory (the agent's own object is swapped for the call)."""
        agent = self.load()
        with self._turn:
            agent.memory = memory
            return agent.ask(question)

    def search(self, term: str):
        return self.load().search(term)


def answer_markdown(answer) -> str:
    """The chat reply: the answer with its source and score (or the abstention), then the generator's text."""
    if answer.abstained:
        head = f"🤷 {answer.to_text()}"
    else:
        head = f"**{answer.answer}**  \nsource: **[{answer.source.id}]** *{answer.source.title}* · reader score {answer.score:.2f}"
    return f"{head}  \n_generator:_ {answer.generated_text()}"


def fragments_markdown(fragments, cited: list[str], heading: str) -> str:
    if not fragments:
        return f"**{heading}:** none"
    lines = [f"**{heading}** (✅ = the answer is found in it):"]
    for fragment in fragments:
        mark = "✅" if fragment.id in cited else "▫️"
        lines.append(f"{mark} **[{fragment.id}]** *{fragment.title}* · score {fragment.score:.2f}  \n{fragment.text}")
    return "\n\n".join(lines)


def memory_markdown(memory) -> str:
    exchanges = memory.exchanges() if memory is not None else []
    if not exchanges:
        return "_Memory: empty._"
    lines = [f"**Memory** ({len(exchanges)} of at most 3 exchanges, oldest first):"]
    lines += [f"{i}. Q: {q} → A: {a}" for i, (q, a) in enumerate(exchanges, 1)]
    return "\n".join(lines)


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
    gr.Examples([[example] for example in CHAT_EXAMPLES], [message], example_labels=CHAT_EXAMPLES)

    async def respond(text: str, history: list, session_memory):
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
            answer = await guard.call(chat.ask, session_memory, command.argument)
            reply = answer_markdown(answer)
            heading = "MOCK web_search results used" if answer.web_search else "Retrieved fragments"
            searched = f"Searched as: _{answer.query}_\n\n" if answer.query != answer.question and not answer.web_search else ""
            shown = f"Answered by `{chat.load().description}`.\n\n{searched}" + fragments_markdown(answer.fragments, answer.cited, heading)
        history = [*(history or []), {"role": "user", "content": text}, {"role": "assistant", "content": reply}]
        return "", history, session_memory, shown, memory_markdown(session_memory)

    outputs = [message, chatbot, memory, fragments, remembered]
    gr.on([send.click, message.submit], respond, [message, chatbot, memory], outputs, api_name="chat")

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
