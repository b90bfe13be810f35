"""The RAG agent's command-line REPL: `python -m pocketlm.rag`.

Type a question: the agent retrieves fragments (using the conversation for a follow-up), the extractive reader
answers with a span of one of them — its source and score shown — or says it is not found in the fragments;
the LoRA-tuned LM's answer is shown beside it. Commands: `!search term` (the MOCK web_search tool), `!help`,
`!reset` (forget the conversation), `!quit`. End of input (Ctrl-D) and Ctrl-C leave cleanly.
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Callable

from rich.console import Console
from rich.markup import escape

from pocketlm import MINILM_SQUAD, RAG_INDEX, TINY_LM_RAG_LORA
from pocketlm.rag.answer import ABSTAIN_BELOW
from pocketlm.rag.commands import CommandError, help_text, parse_command
from pocketlm.rag.lexical import HYBRID_WEIGHT

PROMPT = "rag> "
HELP = help_text(markdown=False, can_quit=True)


def show_answer(console: Console, result) -> None:
    label = "[bold yellow]answer:[/]" if result.abstained else "[bold green]answer:[/]"
    console.print(f"{label} {escape(result.to_text())}")
    console.print(f"[dim]generator:[/] {escape(result.generated_text())}")
    if result.query != result.question and result.web_search is None:
        console.print("[dim]searched as: " + escape(result.query) + "[/]")
    if result.web_search is not None:
        console.print("[dim]" + escape(f"(from {len(result.fragments)} MOCK web_search results)") + "[/]")
    for fragment in result.fragments:
        mark = "*" if fragment.id in result.cited else " "
        preview = " ".join(fragment.text.split()[:14])
        console.print(f" {mark}[cyan]\\[{escape(fragment.id)}][/] [dim]{escape(fragment.title)} ({fragment.score:.2f}):[/] {escape(preview)}…")


def repl(agent, console: Console, read: Callable[[str], str] = input) -> int:
    """Read-answer loop over `agent` (a `RagAgent`); returns the exit status."""
    console.print("Type a question, or !help. [dim](!quit, Ctrl-D or Ctrl-C to leave)[/]")
    while True:
        try:
            line = read(PROMPT)
        except (EOFError, KeyboardInterrupt):
            console.print("\nbye")
            return 0
        try:
            command = parse_command(line, can_quit=True)
            if command is None:
                continue
            if command.name == "quit":
                console.print("bye")
                return 0
            elif command.name == "help":
                console.print(escape(HELP))
            elif command.name == "reset":
                agent.reset()
                console.print("conversation forgotten.")
            elif command.name == "search":
                console.print(escape(agent.search(command.argument).to_text()))
            else:
                show_answer(console, agent.ask(command.argument))
        except CommandError as error:
            console.print(escape(str(error)))
        except KeyboardInterrupt:  # Ctrl-C while the model is answering: leave, as at the prompt
            console.print("\nbye")
            return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pocketlm.rag", description=__doc__.splitlines()[0])
    parser.add_argument("--index", default=RAG_INDEX, help=f"published index id or folder (default {RAG_INDEX})")
    parser.add_argument("--index_type", choices=["flat", "opq"], default="flat", help="which FAISS index to search")
    parser.add_argument("--no_adapter", action="store_true", help="search with the stock encoder, without the query adapter")
    parser.add_argument("--lexical_weight", type=float, default=HYBRID_WEIGHT,
                        help=f"weight of BM25 fused with the dense scores (default {HYBRID_WEIGHT}; 0: dense retrieval only)")
    parser.add_argument("--lora", default=TINY_LM_RAG_LORA, help=f"generator LoRA id or folder, or none (default {TINY_LM_RAG_LORA}, used when published)")
    parser.add_argument("--base", default=None, help="base causal LM (default: the one the LoRA was trained from)")
    parser.add_argument("--k", type=int, default=3, help="fragments per answer")
    parser.add_argument("--reader", default=MINILM_SQUAD, help=f"extractive QA model id or folder (default {MINILM_SQUAD})")
    parser.add_argument("--abstain_below", type=float, default=ABSTAIN_BELOW,
                        help=f"reader score under which the answer is 'not found in the fragments' (default {ABSTAIN_BELOW})")
    parser.add_argument("--no_conversation", action="store_true", help="search every question as typed, ignoring the conversation")
    parser.add_argument("--documents", default=None, metavar="DIR",
                        help="a folder of your own documents (.txt, .md, .html, .pdf) to add to the index for this "
                        "session; their passages are cited as FILE#N")
    args = parser.parse_args(argv)
    if args.k < 1:
        parser.error("--k must be at least 1")
    if not args.lexical_weight >= 0:
        parser.error("--lexical_weight must be >= 0 (0: dense retrieval only)")
    if not 0 <= args.abstain_below <= 1:
        parser.error("--abstain_below must be in [0, 1] (0: never abstain)")
    # Ctrl-C leaves the REPL even when it was started from a shell that ignores SIGINT (a background job of a
    # script: the ignored disposition is inherited and Python then never raises KeyboardInterrupt).
    documents = None
    if args.documents is not None:
        from pocketlm.rag.documents import DocumentError, folder_files

        try:
            documents = folder_files(args.documents)
        except DocumentError as err:
            parser.error(f"--documents: {err}")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    console = Console(highlight=False)
    console.print("[dim]loading the retriever and the generator…[/]")
    from pocketlm.rag.chain import RagAgent

    agent = RagAgent.from_pretrained(
        args.index, lora=args.lora, base=args.base, index_type=args.index_type, use_adapter=not args.no_adapter, k=args.k,
        lexical_weight=args.lexical_weight, reader=args.reader, abstain_below=args.abstain_below,
        conversation_aware=not args.no_conversation,
    )
    adapter = "with" if agent.retriever.adapter is not None else "without"
    lexical = f"+ BM25 (weight {args.lexical_weight:g})" if agent.retriever.lexical is not None else "dense only"
    console.print(
        f"[dim]index: {agent.retriever.index.config.get('factory', '?')} over {len(agent.retriever.index.passages)} passages, "
        f"{adapter} query adapter, {lexical}; {escape(agent.description)}[/]"
    )
    if documents is not None:
        add_folder(agent.retriever, documents, args.documents, console)
    return repl(agent, console)


def add_folder(retriever, files, folder: str, console: Console) -> None:
    """Index the folder's documents, saying what went in and which files were refused, and why."""
    from pocketlm.errors import ConfigError
    from pocketlm.rag.documents import DocumentError, add_documents

    console.print(f"[dim]indexing {len(files)} file(s) from {escape(folder)}…[/]")
    try:
        batch = add_documents(retriever, files)
    except DocumentError as err:
        raise ConfigError(f"--documents {folder}: {err}") from None
    console.print(escape(batch.summary()))


