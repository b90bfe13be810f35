"""Command lines of the Spaces: `spaces/<name>/app.py` (one Space) and `spaces/suite/app.py` (all of them,
mounted on the REST API). Plain argparse, parsed before anything heavy is imported, so `--help` and a bad
flag answer at once.

A Space takes no flags on Hugging Face: each model id comes from its flag if given, else from the
environment (`pocketlm.artifacts`: `POCKETLM_TINY_LM_ONNX=alice/tiny-lm-onnx`, `POCKETLM_NAMESPACE=alice`),
else `pocketlm/...`. A model that cannot be found is a one-line error when its flag named it; when it came
from the defaults or the environment — as in a Space — the Space serves a page instead that names the id it
looked for and how to build or push it (`pocketlm.spaces.common.missing_models_page`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pocketlm import BASE_ENCODER, MINILM_SQUAD, MINILM_SQUAD_ONNX, RAG_INDEX, TINY_LM, TINY_LM_ONNX, TINY_LM_RAG_LORA
from pocketlm.artifacts import ARTIFACTS, artifact_id
from pocketlm.hub import ArtifactNotFoundError
from pocketlm.spaces import SPACE_NAMES, SPACE_TITLES

DEFAULT_PORT = 7860
SUITE = "suite"
RAG_FLAGS = ("rag_index", "rag_generator", "rag_base", "rag_reader")
TAB_FLAGS = ("lm", "qa", "qa_pytorch", "rag_index")
"""The suite's flags that take 'none' to leave a tab out."""


@dataclass(frozen=True)
class ModelFlag:
    default_id: str
    """The artifact's default id (`pocketlm.artifacts.ARTIFACTS`); the environment may override it."""
    help: str
    spaces: tuple[str, ...]


MODEL_FLAGS: dict[str, ModelFlag] = {
    "lm": ModelFlag(TINY_LM_ONNX, "the LM's ONNX export (text generation)", ("text_generation",)),
    "qa": ModelFlag(MINILM_SQUAD_ONNX, "the QA model's ONNX export (question answering, benchmark)",
                    ("question_answering", "onnx_benchmark")),
    "qa_pytorch": ModelFlag(MINILM_SQUAD, "the QA model's PyTorch checkpoint (benchmark)", ("onnx_benchmark",)),
    "rag_index": ModelFlag(RAG_INDEX, "the FAISS index and its retriever (RAG chat)", ("rag_chat",)),
    "rag_reader": ModelFlag(MINILM_SQUAD, "the RAG agent's extractive reader: its answers are spans it finds "
                            "(RAG chat)", ("rag_chat",)),
    "rag_generator": ModelFlag(TINY_LM_RAG_LORA, "the RAG generator's LoRA (RAG chat; 'none', or the default when it "
                               "is not there: the base LM alone)", ("rag_chat",)),
    "rag_base": ModelFlag(TINY_LM, "the RAG generator's base LM, the model its LoRA was trained on (RAG chat)",
                          ("rag_chat",)),
}

SPACE_EXTRA_MODELS = {"rag_chat": (BASE_ENCODER,)}
"""Models a Space loads that are not pocketlm artifacts (the RAG index names its encoder)."""


def space_flags(space: str) -> list[str]:
    return [flag for flag, spec in MODEL_FLAGS.items() if space == SUITE or space in spec.spaces]


def space_models(space: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """The ids `space` loads by default under `environ` (default: the process's): its README's `models:`."""
    return [artifact_id(MODEL_FLAGS[flag].default_id, environ) for flag in space_flags(space)] + [
        model for name in ((space,) if space != SUITE else SPACE_NAMES) for model in SPACE_EXTRA_MODELS.get(name, ())]


def parse_args(space: str, argv: list[str] | None = None) -> argparse.Namespace:
    prog = f"python spaces/{space}/app.py"
    parser = argparse.ArgumentParser(prog=prog, description=f"pocketlm {space.replace('_', ' ')} (Gradio)")
    # Loopback unless told otherwise; Hugging Face Spaces sets GRADIO_SERVER_NAME=0.0.0.0 in its containers.
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="interface to bind (default: $GRADIO_SERVER_NAME, else 127.0.0.1: loopback only)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", DEFAULT_PORT)),
                        help="(default: $GRADIO_SERVER_PORT, else %(default)s)")
    for flag in space_flags(space):
        spec = MODEL_FLAGS[flag]
        parser.add_argument(f"--{flag.replace('_', '-')}", default=None,
                            help=f"Hub id or folder of {spec.help} (default: ${ARTIFACTS[spec.default_id].env_var}, "
                            f"else {artifact_id(spec.default_id)})" +
                            ("; 'none' leaves its tab out" if space == SUITE and flag in TAB_FLAGS else ""))
    if space in (SUITE, "rag_chat"):
        from pocketlm.rag.answer import ABSTAIN_BELOW

        parser.add_argument("--rag-abstain-below", type=float, default=ABSTAIN_BELOW,
                            help="the RAG reader's score under which the chat says 'not found in the fragments' "
                            "(default %(default)s)")
    if space in (SUITE, "text_generation"):
        from pocketlm.inference.onnx_lm import LM_PRECISIONS

        parser.add_argument("--lm-precision", choices=LM_PRECISIONS, default="fp32")
    if space in (SUITE, "question_answering"):
        parser.add_argument("--qa-precision", choices=["fp32", "int8"], default="int8")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime / torch intra-op threads (default: CPUs, at most 4)")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port must be in 1..65535, got {args.port}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    args.explicit = {flag for flag in space_flags(space) if getattr(args, flag) is not None}
    for flag in space_flags(space):
        if getattr(args, flag) is None:
            setattr(args, flag, artifact_id(MODEL_FLAGS[flag].default_id))
    if space == SUITE and all(chosen(args, flag) is None for flag in TAB_FLAGS):
        parser.error("every model is 'none': nothing to serve")
    if not 0 <= getattr(args, "rag_abstain_below", 0) <= 1:
        parser.error(f"--rag-abstain-below must be in [0, 1] (0: never abstain), got {args.rag_abstain_below}")
    if getattr(args, "rag_reader", None) == "none" and chosen(args, "rag_index"):
        parser.error("--rag-reader cannot be 'none': the RAG chat's answers are the reader's spans")
    return args


def chosen(args: argparse.Namespace, flag: str) -> str | None:
    """The id or folder given for `flag`, or None ('none', or not a flag of this Space, or RAG left out)."""
    value = getattr(args, flag, None)
    if value in (None, "none") or flag in RAG_FLAGS and getattr(args, "rag_index", "none") == "none":
        return None
    return value


@dataclass(frozen=True)
class Missing:
    flag: str
    repo_id: str
    reason: str


class MissingModels(ArtifactNotFoundError):
    """Models of a Space that are neither on disk nor on the Hub; the message names each flag and id."""

    def __init__(self, missing: list[Missing], suite: bool = False):
        self.missing = missing
        hint = " (or pass it as 'none' to leave its tab out)" if suite else ""
        super().__init__("; ".join(f"--{m.flag.replace('_', '-')} {m.repo_id}: {m.reason}{hint}" for m in missing))


def fetch_models(args: argparse.Namespace, suite: bool = False) -> dict[str, str | None]:
    """flag -> a folder or id that loads offline from here on, for every model chosen in `args`: found on disk,
    or downloaded from the Hub by repo id. Raises `MissingModels` listing every one that is not there; the
    default RAG LoRA is optional (without it the RAG agent answers with the base LM)."""
    from pocketlm.spaces.common import local_folder

    folders: dict[str, str | None] = {}
    missing = []
    for flag in MODEL_FLAGS:
        repo_id = chosen(args, flag)
        if repo_id is None:
            folders[flag] = None
            continue
        try:
            folders[flag] = local_folder(repo_id)
        except ArtifactNotFoundError as err:
            folders[flag] = None
            if not (flag == "rag_generator" and repo_id == artifact_id(TINY_LM_RAG_LORA)):
                missing.append(Missing(flag, repo_id, str(err)))
    if missing:
        raise MissingModels(missing, suite)
    return folders


def models_or_page(space: str, args: argparse.Namespace):
    """`(folders, None)`, or `(None, page)` when a model from the defaults or the environment is missing; a
    missing model that a flag named is the one-line error."""
    try:
        return fetch_models(args, suite=space == SUITE), None
    except MissingModels as err:
        if any(m.flag in args.explicit for m in err.missing):
            raise
        from pocketlm.spaces.common import missing_models_page

        print(f"warning: {err}", flush=True)
        return None, missing_models_page(SPACE_TITLES.get(space, "Spaces suite"), err.missing)


def launch(blocks, args: argparse.Namespace, max_file_size: int | None = None) -> None:
    """Serve `blocks` with Gradio's server; uploads are refused unless `max_file_size` (bytes per file) allows them."""
    from pocketlm.spaces.common import MAX_UPLOAD_BYTES, queued

    queued(blocks).launch(server_name=args.host, server_port=args.port, ssr_mode=False, show_error=True,
                          footer_links=["api"], max_file_size=MAX_UPLOAD_BYTES if max_file_size is None else max_file_size)


def space_main(space: str, build: Callable[[argparse.Namespace, dict], object], argv: list[str] | None = None, *,
               max_file_size: int | None = None) -> int:
    """`spaces/<space>/app.py`: fetch that Space's models, `build(args, folders)` its Blocks, launch them with
    Gradio's server (or the missing-models page). Only a Space that takes files gives `max_file_size`."""
    if space not in SPACE_NAMES:
        raise ValueError(f"unknown Space {space!r}")
    args = parse_args(space, argv)
    folders, blocks = models_or_page(space, args)
    if folders is not None:
        print(f"loading the models of {space}…", flush=True)
        blocks = build(args, folders)
    launch(blocks, args, max_file_size)
    return 0
