"""Stage a Space for the Hugging Face Hub: its folder (`app.py`, `README.md` with the Spaces front matter,
`requirements.txt`) plus the `pocketlm` package beside `app.py`, so the folder runs on its own; `--push` uploads it.

    python -m pocketlm.spaces.stage text_generation --output_dir /tmp/space            # look before pushing
    python -m pocketlm.spaces.stage text_generation --push you/pocketlm-text-generation  # needs a token

On the Hub the models load by their repo ids (`pocketlm.hub.resolve`, then a snapshot download). The ONNX
benchmark's recorded results travel with it when they exist.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from pocketlm.cli import run
from pocketlm.errors import ConfigError
from pocketlm.settings import REPO_ROOT
from pocketlm.spaces import SPACE_NAMES

RECORDED = {"onnx_benchmark": ["benchmarks/results/qa_latency"]}


def stage(space: str, output_dir: Path) -> Path:
    """Copy the Space and the library into `output_dir` (created; must not hold anything else); returns it."""
    if output_dir.exists() and any(output_dir.iterdir()):
        raise ConfigError(f"--output_dir {output_dir} is not empty")
    shutil.copytree(REPO_ROOT / "spaces" / space, output_dir, dirs_exist_ok=True)
    shutil.copytree(REPO_ROOT / "pocketlm", output_dir / "pocketlm", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for relative in RECORDED.get(space, []):
        if (REPO_ROOT / relative).is_dir():
            shutil.copytree(REPO_ROOT / relative, output_dir / relative)
    return output_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("space", choices=SPACE_NAMES)
    parser.add_argument("--output_dir", type=Path, default=None, help="where to stage (default: a temporary folder)")
    parser.add_argument("--push", metavar="REPO_ID", default=None, help="upload to this Space repo on the Hub")
    parser.add_argument("--token", default=None, help="Hub token (default: the one `hf auth login` saved)")
    args = parser.parse_args(argv)
    folder = stage(args.space, args.output_dir or Path(tempfile.mkdtemp(prefix=f"pocketlm-space-{args.space}-")))
    print(f"staged {args.space} in {folder}")
    if args.push:
        from huggingface_hub import HfApi

        api = HfApi(token=args.token)
        api.create_repo(args.push, repo_type="space", space_sdk="gradio", exist_ok=True)
        commit = api.upload_folder(folder_path=folder, repo_id=args.push, repo_type="space")
        print(f"pushed: {commit}")
    return 0


if __name__ == "__main__":
    run(main)
