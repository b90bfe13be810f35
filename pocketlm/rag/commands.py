"""The RAG agent's `!` commands, parsed in one place for the REPL (`python -m pocketlm.rag`) and the chat Space.

A line is either a question for the agent or one of the commands below; both front ends parse it here and
only differ in how they show the result (a terminal, a Gradio chat). Kept free of heavy imports: the Space
builds its page before any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

INTRO = "Ask a question in plain words; the answer cites the ids of the fragments it comes from."
COMMANDS = {
    "!search": ("!search <term>", "run the **MOCK** web_search tool (offline and deterministic: a fixed local page set, "
                                  "not the internet)"),
    "!reset": ("!reset", "forget the conversation (the agent keeps the last 3 exchanges)"),
    "!help": ("!help", "this help"),
}
QUIT_WORDS = ("!quit", "!exit", "!q")
QUIT_HELP = ("!quit", "leave (Ctrl-D and Ctrl-C work too)")
WEB_QUESTION_HELP = ('A question such as "search the web for <term>" answers from the mock search results '
                     "instead of the index.")


class CommandError(ValueError):
    """A line that is no question and no valid command; the message is for the user as it is."""


@dataclass(frozen=True)
class Command:
    """What a line asks for: `name` is "ask", "search", "reset", "help" or "quit"; `argument` the question or term."""

    name: str
    argument: str = ""


def parse_command(line: str, *, can_quit: bool = False) -> Command | None:
    """The command of `line` (None for a blank line); raises `CommandError` for a malformed or unknown one.

    `can_quit`: whether `!quit` (and `!exit`, `!q`) exists, as in the REPL; a chat session cannot be left.
    """
    line = line.strip()
    if not line:
        return None
    if not line.startswith("!"):
        return Command("ask", line)
    word, _, argument = line.partition(" ")
    argument = argument.strip()
    if can_quit and word in QUIT_WORDS:
        return Command("quit")
    if word not in COMMANDS:
        raise CommandError(f"Unknown command {word}; type !help")
    if word == "!search" and not argument:
        raise CommandError("Usage: !search <term>")
    return Command(word[1:], argument)


def help_text(*, markdown: bool, can_quit: bool = False) -> str:
    """The help for `!help`: Markdown for the chat, plain aligned lines for a terminal."""
    entries = [*COMMANDS.values(), *([QUIT_HELP] if can_quit else [])]
    if markdown:
        return "\n\n".join([INTRO, "\n".join(f"* `{usage}` {text}" for usage, text in entries), WEB_QUESTION_HELP])
    lines = [f"  {usage:<16} {text.replace('**', '')}" for usage, text in entries]
    return "\n".join([INTRO, *lines, WEB_QUESTION_HELP])
