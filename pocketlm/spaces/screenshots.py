"""The docs' screenshots (docs/spaces.md): start the suite on the published models, run each tab's example in headless
Chromium, save one PNG per tab (and one of the message an empty question gets).

    python -m pocketlm.spaces.screenshots                      # writes docs/screenshots/<tab>.png
    python -m pocketlm.spaces.screenshots --rag-index none     # without the RAG tab
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pocketlm.cli import run
from pocketlm.settings import REPO_ROOT
from pocketlm.spaces import SPACE_NAMES

README_COLOURS = 64


def shrink_png(path: Path, colours: int = README_COLOURS) -> None:
    """Rewrite a screenshot as a palette PNG: a flat UI needs few colours, and the docs' images stay ~40 KB
    instead of ~120 KB (Pillow, which matplotlib already installs)."""
    from PIL import Image

    with Image.open(path) as image:
        palette = image.convert("RGB").quantize(colors=colours, method=Image.Quantize.MEDIANCUT)
    palette.save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", type=Path, default=REPO_ROOT / "docs" / "screenshots")
    parser.epilog = "Any other flag goes to spaces/suite/app.py (e.g. --rag-index none, --qa FOLDER)."
    args, suite_flags = parser.parse_known_args(argv)

    from pocketlm.spaces.browser import visit_suite
    from pocketlm.spaces.examples import CHAT_EXAMPLES
    from pocketlm.spaces.cli import fetch_models, parse_args as suite_args
    from pocketlm.spaces.launch import running_suite

    flags = suite_args("suite", suite_flags)
    fetch_models(flags, suite=True)
    tabs = [name for name in SPACE_NAMES if name != "rag_chat" or flags.rag_index != "none"]
    with running_suite(suite_flags) as suite:
        visit = visit_suite(suite.base_url, args.output_dir, tabs, CHAT_EXAMPLES)
    for shot in sorted(args.output_dir.glob("*.png")):
        shrink_png(shot)
    for tab in visit.tabs.values():
        print(f"{tab.screenshot}: answered in {tab.seconds:.2f} s — {tab.answer[:80]!r}")
    if visit.outside_requests:
        print(f"warning: the page requested {visit.outside_requests}")
    return 0


if __name__ == "__main__":
    run(main)
