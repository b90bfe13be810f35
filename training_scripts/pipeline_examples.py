"""Regenerate or check the docs' seeded pipeline examples (`generate_text`, `answer_question`).

    python training_scripts/pipeline_examples.py                     # print the block
    python training_scripts/pipeline_examples.py --write docs/inference.md   # put it into the page
    python training_scripts/pipeline_examples.py --check docs/inference.md   # exit 1 if the page's block differs
"""

from __future__ import annotations

import argparse
import difflib
from pathlib import Path

from pocketlm.cli import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", metavar="README", type=Path, help="replace the examples block of this file")
    action.add_argument("--check", metavar="README", type=Path, help="compare this file's examples block with a fresh run")
    args = parser.parse_args(argv)
    readme = args.write or args.check
    if readme is not None and not readme.is_file():
        parser.error(f"no such file: {readme}")

    from pocketlm.inference.readme_examples import current_block, render_examples, replace_block

    text = readme.read_text(encoding="utf-8") if readme else None
    if text is not None and current_block(text) is None:
        parser.error(f"{readme} has no pipeline-examples block (add the start/end markers)")
    block = render_examples()
    if args.write:
        args.write.write_text(replace_block(text, block), encoding="utf-8")
        print(f"updated {args.write}")
    elif args.check:
        old = current_block(text)
        if old != block:
            diff = difflib.unified_diff(old.splitlines(), block.splitlines(), "README", "fresh run", lineterm="")
            print("\n".join(diff))
            print(f"{args.check}: the pipeline examples differ from a fresh run (rerun with --write)")
            return 1
        print(f"{args.check}: the pipeline examples reproduce exactly")
    else:
        print(block)
    return 0


if __name__ == "__main__":
    run(main)
