"""Command lines of the Spaces: `spaces/<name>/app.py` (one Space) and `spaces/suite/app.py` (all of them,
mounted on the REST API). Plain argparse, parsed before anything heavy is imported, so `--help` and a bad
flag answer at once; a model that is not built is a one-line error naming its flag.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable

from pocketlm import MINILM_SQUAD, MINILM_SQUAD_ONNX, RAG_INDEX, TINY_LM_ONNX, TINY_LM_RAG_LORA
from pocketlm.spaces import SPACE_NAMES

DEFAULT_PORT = 7860
SUITE = "suite"

# flag -> (default, help, the Spaces that use it)
MODEL_FLAGS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "lm": (TINY_LM_ONNX, "the LM's ONNX export (text generation)", ("text_generation",)),
    "qa": (MINILM_SQUAD_ONNX, "the QA model's ONNX export (question answering, benchmark)",
           ("question_answering", "onnx_benchmark")),
    "qa_pytorch": (MINILM_SQUAD, "the QA model's PyTorch checkpoint (benchmark)", ("onnx_benchmark",)),
    "rag_index": (RAG_INDEX, "the FAISS index and its retriever (RAG chat)", ("rag_chat",)),
    "rag_generator": (TINY_LM_RAG_LORA, "the RAG generator's LoRA (RAG chat; 'none', or the default when it is "
                      "not built: the base LM alone)", ("rag_chat",)),
}


def parse_args(space: str, argv: list[str] | None = None) -> argparse.Namespace:
    prog = f"python spaces/{space}/app.py"
    parser = argparse.ArgumentParser(prog=prog, description=f"pocketlm {space.replace('_', ' ')} (Gradio)")
    # Loopback unless told otherwise; Hugging Face Spaces sets GRADIO_SERVER_NAME=0.0.0.0 in its containers.
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="interface to bind (default: $GRADIO_SERVER_NAME, else 127.0.0.1: loopback only)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", DEFAULT_PORT)),
                        help="(default: $GRADIO_SERVER_PORT, else %(default)s)")
    for flag, (default, text, spaces) in MODEL_FLAGS.items():
        if space == SUITE or space in spaces:
            parser.add_argument(f"--{flag.replace('_', '-')}", default=default,
                                help=f"Hub id or folder of {text} (default: %(default)s)" +
                                ("; 'none' leaves its tab out" if space == SUITE and flag != "rag_generator" else ""))
    if space in (SUITE, "text_generation"):
        parser.add_argument("--lm-precision", choices=["fp32", "int8"], default="fp32")
    if space in (SUITE, "question_answering"):
        parser.add_argument("--qa-precision", choices=["fp32", "int8"], default="int8")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime / torch intra-op threads (default: CPUs, at most 4)")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port must be in 1..65535, got {args.port}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if space == SUITE and all(getattr(args, flag) == "none" for flag in MODEL_FLAGS if flag != "rag_generator"):
        parser.error("every model is 'none': nothing to serve")
    return args


def check_models(args: argparse.Namespace, suite: bool = False) -> None:
    """Fail before the slow imports when a model is not built: `error: --qa pocketlm/...: <where we looked>`."""
    from pocketlm.hub import ArtifactNotFoundError, resolve

    for flag in MODEL_FLAGS:
        repo_id = getattr(args, flag, "none")
        if flag.startswith("rag_") and not _rag_enabled(args):
            continue
        if flag == "rag_generator" and repo_id == TINY_LM_RAG_LORA:
            continue  # optional: without it the agent answers with the base LM (pocketlm.rag.generator.load_generator)
        if repo_id != "none":
            try:
                resolve(repo_id)
            except ArtifactNotFoundError as err:
                hint = " (or pass it as 'none' to leave its tab out)" if suite else ""
                raise ArtifactNotFoundError(f"--{flag.replace('_', '-')} {repo_id}: {err}{hint}") from None


def _rag_enabled(args: argparse.Namespace) -> bool:
    """`--rag-index none` leaves the RAG tab out."""
    return _chosen(args, "rag_index") is not None


def _chosen(args: argparse.Namespace, flag: str) -> str | None:
    value = getattr(args, flag, "none")
    return None if value == "none" else value


def space_main(space: str, argv: list[str] | None = None) -> int:
    """`spaces/<space>/app.py`: load that Space's models by repo id, build it, launch it with Gradio's server."""
    if space not in SPACE_NAMES:
        raise ValueError(f"unknown Space {space!r}")
    args = parse_args(space, argv)
    check_models(args)
    print(f"loading the models of {space}…", flush=True)
    blocks = _build_space(space, args)
    from pocketlm.spaces.common import MAX_UPLOAD_BYTES, queued

    if space == "rag_chat":  # the one Space that takes files: users' documents, up to its per-file cap
        from pocketlm.spaces.rag_chat import UPLOAD_BYTES as MAX_UPLOAD_BYTES
    queued(blocks).launch(server_name=args.host, server_port=args.port, ssr_mode=False, show_error=True,
                          footer_links=["api"], max_file_size=MAX_UPLOAD_BYTES)
    return 0


def _build_space(space: str, args: argparse.Namespace):
    from pocketlm.spaces.common import local_folder

    if space == "text_generation":
        from pocketlm.serving.models import load_lm
        from pocketlm.spaces import text_generation

        return text_generation.build(load_lm(local_folder(args.lm), args.lm_precision, args.threads))
    if space == "question_answering":
        from pocketlm.serving.models import load_qa
        from pocketlm.spaces import question_answering

        return question_answering.build(load_qa(local_folder(args.qa), args.qa_precision, args.threads))
    if space == "onnx_benchmark":
        from pocketlm.spaces import onnx_benchmark

        backends = onnx_benchmark.QABackends(args.qa_pytorch, args.qa, args.threads)
        backends.load()
        return onnx_benchmark.build(backends)
    from pocketlm.spaces import rag_chat

    chat = rag_chat.RagChat(args.rag_index, _chosen(args, "rag_generator"))
    chat.load()
    return rag_chat.build(chat)


def suite_main(argv: list[str] | None = None) -> int:
    """`spaces/suite/app.py`: the four Spaces in tabs on the REST API's app, one process, one set of models.

    The ONNX models load while gradio imports (native session building releases the GIL); the torch-based
    parts (the benchmark's PyTorch runtime, the RAG agent) load in the background once the server is up, so
    `/qa` and `/generate` answer within seconds of the start.
    """
    started = time.perf_counter()
    args = parse_args(SUITE, argv)
    check_models(args, suite=True)
    from concurrent.futures import ThreadPoolExecutor

    from pocketlm.spaces.common import local_folder

    lm, qa = (_chosen(args, flag) for flag in ("lm", "qa"))
    with ThreadPoolExecutor(1) as pool:
        from pocketlm.serving.models import load_models

        loading = pool.submit(
            load_models, lm and local_folder(lm), qa and local_folder(qa),
            lm_precision=args.lm_precision, qa_precision=args.qa_precision, threads=args.threads,
        )
        import uvicorn

        from pocketlm.spaces.onnx_benchmark import QABackends
        from pocketlm.spaces.suite import create_suite_app

        models = loading.result()
    backends = QABackends(args.qa_pytorch, qa, args.threads) if qa and _chosen(args, "qa_pytorch") else None
    rag = None
    if _rag_enabled(args):
        from pocketlm.spaces import rag_chat

        rag = rag_chat.RagChat(args.rag_index, _chosen(args, "rag_generator"))
    app = create_suite_app(models, backends, rag)
    from pocketlm.serving.http_limits import server_config

    # Open event streams (a browser tab, a streaming client) would hold a graceful shutdown forever: cap it.
    server = uvicorn.Server(server_config(app, args.host, args.port, app.state.admission.limits, log_level="warning",
                                          access_log=False, timeout_graceful_shutdown=2))
    background = [loader.load for loader in (backends, rag) if loader is not None]
    threading.Thread(target=_load_when_serving, args=(server, background, started), daemon=True).start()
    server.run()
    return 0


def _load_when_serving(server, loaders: list[Callable[[], object]], started: float) -> None:
    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.05)
    host, port = server.config.host, server.config.port
    print(f"pocketlm Spaces suite on http://{host}:{port}/ (REST API docs: http://{host}:{port}/docs), "
          f"ready in {time.perf_counter() - started:.1f} s, pid {os.getpid()}", flush=True)
    for load in loaders:
        try:
            load()
        except Exception as err:  # the tab reports it on use; the rest of the suite keeps serving
            print(f"warning: background loading failed: {err}", file=sys.stderr, flush=True)
    print(f"all tabs loaded ({time.perf_counter() - started:.1f} s after start)", flush=True)
