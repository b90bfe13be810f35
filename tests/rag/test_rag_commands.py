"""The `!` commands the REPL and the chat Space share: one parser, one help."""

import pytest

from pocketlm.rag.commands import COMMANDS, Command, CommandError, help_text, parse_command


@pytest.mark.parametrize("line, expected", [
    ("  Who won Super Bowl 50? ", Command("ask", "Who won Super Bowl 50?")),
    ("search the web for Olmec heads", Command("ask", "search the web for Olmec heads")),  # the agent's own tool call
    ("!search   Olmec colossal heads ", Command("search", "Olmec colossal heads")),
    ("!reset", Command("reset")),
    ("!help please", Command("help", "please")),
    ("   ", None),
])
def test_a_line_is_a_question_or_a_command(line, expected):
    assert parse_command(line) == expected


@pytest.mark.parametrize("line, message", [
    ("!search", "Usage: !search <term>"),
    ("!search    ", "Usage: !search <term>"),
    ("!bogus term", "Unknown command !bogus; type !help"),
    ("!quit", "Unknown command !quit; type !help"),  # a chat session has no quit
])
def test_bad_commands_are_user_messages(line, message):
    with pytest.raises(CommandError) as raised:
        parse_command(line)
    assert str(raised.value) == message


def test_only_the_repl_can_quit():
    assert [parse_command(word, can_quit=True) for word in ("!quit", "!exit", "!q")] == [Command("quit")] * 3


def test_both_helps_list_every_command():
    terminal, markdown = help_text(markdown=False, can_quit=True), help_text(markdown=True)
    for usage, _ in COMMANDS.values():
        assert f"  {usage} " in terminal and f"* `{usage}`" in markdown
    assert "!quit" in terminal and "!quit" not in markdown and "**" not in terminal
