"""Record a REPL session for the docs: `python -m pocketlm.rag.record --output_dir docs`.

Types a fixed list of inputs into the real REPL (`python -m pocketlm.rag`) through a pseudo-terminal, then
writes what the terminal showed as plain text (`rag_repl_transcript.txt`) and as a rendered screenshot
(`rag_repl.svg`, rich's `Console(record=True).save_svg`). Needs the published index and generator.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from pocketlm.io import atomic_write_text
from pocketlm.rag.pty_session import PtySession, strip_ansi
from pocketlm.settings import REPO_ROOT

INPUTS = [
    "Which NFL team won Super Bowl 50?",
    "Where was the game played?",  # a follow-up: searched with the first exchange's names
    "What was the name of the Toyota compact car?",
    "Who painted the Mona Lisa?",  # no passage holds it
    "!search Tang dynasty poet",
    "search the web for Du Fu",
    "!reset",
    "!quit",
]

CDN_FONT = re.compile(r',\s*url\("https?://[^"]*"\) format\("[^"]*"\)')
"""The web fonts rich's SVG template fetches from a CDN. The docs site makes no outbound request, so the SVG keeps
only its `local()` fonts (a viewer without Fira Code falls back to its monospace font)."""


def record(output_dir: Path, inputs: list[str], repl_args: list[str], width: int = 110) -> tuple[Path, Path]:
    from rich.console import Console
    from rich.text import Text

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with PtySession([sys.executable, "-m", "pocketlm.rag", *repl_args], env=env, cwd=str(REPO_ROOT), columns=width) as session:
        session.expect(r"rag> ", timeout=300)
        for line in inputs:
            session.sendline(line)
            session.expect(r"rag> |bye", timeout=300)
        session.wait(30)
        raw = session.raw.replace("\r\n", "\n").replace("\r", "")
    transcript = output_dir / "rag_repl_transcript.txt"
    atomic_write_text(transcript, "$ python -m pocketlm.rag " + " ".join(repl_args) + "\n" + strip_ansi(raw))
    console = Console(record=True, width=width, force_terminal=True, color_system="truecolor", file=open(os.devnull, "w"))
    console.print("$ python -m pocketlm.rag " + " ".join(repl_args), style="bold")
    console.print(Text.from_ansi(raw))
    svg = output_dir / "rag_repl.svg"
    atomic_write_text(svg, CDN_FONT.sub("", console.export_svg(title="python -m pocketlm.rag")))
    return transcript, svg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default=str(REPO_ROOT / "docs"))
    parser.add_argument("repl_args", nargs="*", help="arguments passed to the REPL (after --)")
    args = parser.parse_args(argv)
    transcript, svg = record(Path(args.output_dir), INPUTS, args.repl_args)
    print(f"wrote {transcript} and {svg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
