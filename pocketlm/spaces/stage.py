"""Stage a Space for Hugging Face: a folder that runs with nothing else — `app.py`, the `pocketlm` modules it
imports, the data they read, `README.md` with complete Spaces front matter and `requirements.txt` derived from
the staged code's imports (`pocketlm.spaces.requirements`); `--push` uploads it as a Gradio Space.

    python -m pocketlm.spaces.stage text_generation --output_dir /tmp/space                 # look before pushing
    python -m pocketlm.spaces.stage rag_chat --namespace alice --push                       # alice/pocketlm-rag-chat
    python -m pocketlm.spaces.stage suite --namespace alice --push alice/my-suite --token hf_...

NAME is a folder under `spaces/` (`suite` included). `--namespace alice` makes the Space load `alice/tiny-lm`
and the rest (the staged `app.py` sets `POCKETLM_NAMESPACE`, which a Space variable still overrides).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

from pocketlm.cli import run
from pocketlm.errors import ConfigError, PocketLMError
from pocketlm.settings import REPO_ROOT
from pocketlm.spaces import SPACE_NAMES

STAGEABLE = (*SPACE_NAMES, "suite")
PYTHON_VERSION = "3.11"
"""What `pyproject.toml` requires (`asyncio.timeout` and the pinned wheels need 3.11)."""
TORCH_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"
"""torch's CPU wheels: PyPI's torch is the CUDA build, gigabytes a CPU Space never uses."""
RECORDED_RESULTS = "benchmarks/results/qa_latency"


def stage(space: str, output_dir: Path, namespace: str | None = None) -> Path:
    """Write the Space `space` into `output_dir` (created; must be empty if it exists); returns it."""
    check_names(space, namespace)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise ConfigError(f"--output_dir {output_dir} is not an empty folder")
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "app.py").write_text(staged_app(space, namespace), encoding="utf-8")
    copy_modules(output_dir)
    stage_data(output_dir)
    (output_dir / "requirements.txt").write_text(requirements_text(output_dir), encoding="utf-8")
    (output_dir / "README.md").write_text(readme(space, namespace), encoding="utf-8")
    return output_dir


def check_names(space: str, namespace: str | None) -> None:
    from pocketlm.artifacts import validate_namespace

    if space not in STAGEABLE:
        raise ConfigError(f"unknown Space {space!r}: choose from {', '.join(STAGEABLE)} (the folders of spaces/)")
    if namespace is not None:
        validate_namespace(namespace)


def staged_app(space: str, namespace: str | None) -> str:
    """`spaces/<space>/app.py`, with `POCKETLM_NAMESPACE` set first when staged for a namespace."""
    source = (REPO_ROOT / "spaces" / space / "app.py").read_text(encoding="utf-8")
    if namespace is None:
        return source
    docstring_end = source.index('"""', 3) + 3
    line = (f'\n\nimport os\n\n# staged with --namespace {namespace}: the models are {namespace}/tiny-lm-onnx and the '
            f'rest; a Space variable\n# (POCKETLM_NAMESPACE, or one per model) still overrides it\n'
            f'os.environ.setdefault("POCKETLM_NAMESPACE", "{namespace}")')
    return source[:docstring_end] + line + source[docstring_end:]


def copy_modules(folder: Path) -> list[Path]:
    """Copy the `pocketlm` modules that `folder/app.py` reaches into `folder/pocketlm/`."""
    from pocketlm.spaces.requirements import reachable

    files, _ = reachable([folder / "app.py"], REPO_ROOT)
    for source in sorted(files):
        target = folder / source.relative_to(REPO_ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return sorted(files)


def stage_data(folder: Path) -> None:
    """The data the staged modules read, staged with them: the mock web_search pages (inside the package,
    where `pocketlm.rag.tools` looks first) and the recorded QA latency results (where the benchmark tab
    looks: `benchmarks/results/` beside the package)."""
    if (folder / "pocketlm" / "rag" / "tools.py").is_file():
        from pocketlm.rag.tools import default_pages

        pages = default_pages()
        if not pages:
            raise ConfigError("the mock web_search pages come from the WikiText-2 mirror, which is not there "
                              "(set POCKETLM_DATA_DIR to it)")
        target = folder / "pocketlm" / "rag" / "mock_web_pages.json"
        target.write_text(json.dumps(pages, ensure_ascii=False), encoding="utf-8")
    if (folder / "pocketlm" / "spaces" / "onnx_benchmark.py").is_file():
        recorded = REPO_ROOT / RECORDED_RESULTS
        if recorded.is_dir():
            shutil.copytree(recorded, folder / RECORDED_RESULTS)
        else:
            print(f"note: no recorded results in {recorded} (python benchmarks/qa_latency.py writes them); "
                  "the benchmark tab will say so", file=sys.stderr)


def requirements_text(folder: Path) -> str:
    """One pinned line per distribution that the staged code imports (with torch's CPU index when torch is one)."""
    from pocketlm.spaces.requirements import distributions, imports_of_folder

    pins = distributions(imports_of_folder(folder))
    lines = ["# Derived from the imports of this folder's code by `python -m pocketlm.spaces.stage`; pins from "
             "pocketlm's requirements-lock.txt.", *([TORCH_INDEX] if "torch" in pins else [])]
    return "\n".join([*lines, *(f"{name}=={pin}" for name, pin in sorted(pins.items(), key=lambda p: p[0].lower()))]) + "\n"


def readme(space: str, namespace: str | None) -> str:
    """The Space's README (a `huggingface_hub.SpaceCard`): the checked-in card with the derived fields set —
    sdk, the installed gradio as `sdk_version`, `python_version`, `app_file`, the `models` it loads — and a
    section listing the variables that choose those models."""
    from huggingface_hub import SpaceCard

    from pocketlm.artifacts import DEFAULT_NAMESPACE, NAMESPACE_VAR, variables_markdown
    from pocketlm.spaces.cli import MODEL_FLAGS, space_flags, space_models

    card = SpaceCard((REPO_ROOT / "spaces" / space / "README.md").read_text(encoding="utf-8"))
    owner = namespace or DEFAULT_NAMESPACE
    derived = dict(sdk="gradio", sdk_version=version("gradio"), python_version=PYTHON_VERSION, app_file="app.py",
                   models=space_models(space, {NAMESPACE_VAR: owner}))
    for key, value in derived.items():
        card.data[key] = value
    if len(card.data.get("short_description", "")) > 60:  # the Hub refuses the card otherwise
        raise ConfigError(f"spaces/{space}/README.md: short_description is over 60 characters")
    ids = list(dict.fromkeys(MODEL_FLAGS[flag].default_id for flag in space_flags(space)))
    card.text = (card.text.rstrip() + "\n\n## Variables\n\nOn Hugging Face, set these in the Space's settings "
                 "(*Variables*) to load other models; locally, export them or pass the flags (`python app.py --help`)."
                 f"\n\n{variables_markdown(ids, owner)}\n")
    return str(card)


def push_target(space: str, repo_id: str | None, namespace: str | None, token: str | None) -> str:
    """The Space repo `--push` uploads to; checked before anything is staged (offline, no token, bad id)."""
    from pocketlm.hub import validate_repo_id
    from pocketlm.settings import hub_offline

    if not repo_id:
        if namespace is None:
            raise ConfigError("--push needs a repo id (--push OWNER/NAME) or --namespace OWNER")
        repo_id = f"{namespace}/pocketlm-{space.replace('_', '-')}"
    validate_repo_id(repo_id, "--push")
    if hub_offline():
        raise PocketLMError("--push: the Hub is offline (HF_HUB_OFFLINE=1); stage with --output_dir and push later")
    from huggingface_hub import get_token

    if not (token or get_token()):
        raise PocketLMError("--push needs a Hub token: pass --token, set HF_TOKEN, or run `hf auth login`")
    return repo_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pocketlm.spaces.stage", description=__doc__.splitlines()[0])
    parser.add_argument("space", metavar="NAME", help=f"the Space: {', '.join(STAGEABLE)}")
    parser.add_argument("--output_dir", type=Path, default=None, help="where to stage (default: a temporary folder)")
    parser.add_argument("--namespace", default=None, help="the Hub user or organisation whose models the Space loads")
    parser.add_argument("--push", nargs="?", const="", default=None, metavar="REPO_ID",
                        help="upload to this Space repo (default: NAMESPACE/pocketlm-NAME)")
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the one `hf auth login` saved)")
    args = parser.parse_args(argv)
    check_names(args.space, args.namespace)
    repo_id = push_target(args.space, args.push, args.namespace, args.token) if args.push is not None else None
    folder = args.output_dir or Path(tempfile.mkdtemp(prefix=f"pocketlm-space-{args.space}-"))
    stage(args.space, folder, args.namespace)
    print(f"staged {args.space} in {folder}")
    if repo_id:
        from pocketlm.hub import push_space

        print(f"pushed: {push_space(folder, repo_id, token=args.token)}")
    return 0


if __name__ == "__main__":
    run(main)
