"""`python -m pocketlm.serving --host 127.0.0.1 --port 8000`: load the ONNX exports, then serve the REST API.

Plain argparse, not the training scripts' HfArgumentParser: that would import transformers, which alone
takes longer than the server's whole one-second start-up budget.
"""

from __future__ import annotations

import argparse
import gc
import os

from pocketlm import MINILM_SQUAD, MINILM_SQUAD_ONNX, TINY_LM_ONNX
from pocketlm.artifacts import ARTIFACTS, artifact_id
from pocketlm.cli import run
from pocketlm.serving.admission import Limits


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = Limits()
    parser = argparse.ArgumentParser(prog="python -m pocketlm.serving", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    # the defaults come from the environment, as in the Spaces (pocketlm.artifacts): POCKETLM_NAMESPACE, one per model
    parser.add_argument("--lm", default=None, help="Hub id or folder of the LM's ONNX export ('none' to skip; default: "
                        f"${ARTIFACTS[TINY_LM_ONNX].env_var}, else {artifact_id(TINY_LM_ONNX)})")
    parser.add_argument("--qa", default=None, help="Hub id or folder of the QA ONNX export ('none' to skip; default: "
                        f"${ARTIFACTS[MINILM_SQUAD_ONNX].env_var}, else {artifact_id(MINILM_SQUAD_ONNX)})")
    parser.add_argument("--rag", default="none", metavar="INDEX",
                        help="RAG index id or folder: answer /v1/chat/completions with the RAG agent over it "
                        "(e.g. pocketlm/rag-index; loads torch, so start-up takes seconds; default none)")
    parser.add_argument("--rag-lora", default=None, help="the RAG agent's generator LoRA (default: the published one, "
                        "if any; 'none' for the base LM)")
    parser.add_argument("--rag-reader", default=None,
                        help="the RAG agent's extractive reader, a QA model id or folder (default: "
                        f"${ARTIFACTS[MINILM_SQUAD].env_var}, else {artifact_id(MINILM_SQUAD)})")
    parser.add_argument("--rag-documents", default=None, metavar="DIR",
                        help="a folder of your own documents (.txt, .md, .html, .pdf) added to the RAG index")
    # (pocketlm.inference.onnx_lm.LM_PRECISIONS, not imported here for the same reason as the schedulers below)
    parser.add_argument("--lm-precision", choices=["fp32", "int8", "int8-static"], default="fp32",
                        help="which LM graph to serve (default fp32: token for token what PyTorch generates, and the "
                        "same batched or not; int8-static: the same batched or not, some greedy tokens differ from "
                        "fp32; int8: dynamic, decoded one request at a time; see the export's model card)")
    parser.add_argument("--qa-precision", choices=["fp32", "int8"], default="int8")
    # the choices are pocketlm.serving.scheduler.SCHEDULERS, not imported here: that would import numpy before
    # the models start loading in parallel with the web stack (see main)
    parser.add_argument("--scheduler", choices=["continuous", "serial"], default=None,
                        help="how /generate and /generate/stream run: 'continuous' (one decode batch that requests join "
                        "and leave at every step, sharing the compute fairly with /qa; the default for the fp32 LM) "
                        "or 'serial' (one request at a time; the default, and the only choice, for the int8 LM)")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: CPU count, at most 4)")
    parser.add_argument("--max-active", type=int, default=defaults.max_active, help="model calls run at once")
    parser.add_argument("--max-batch", type=int, default=defaults.max_batch,
                        help="requests decoded together by the continuous scheduler; more wait for a row")
    parser.add_argument("--max-waiting", type=int, default=defaults.max_waiting,
                        help="requests that may queue for the model; more are refused with 503")
    parser.add_argument("--max-wait-s", type=float, default=defaults.max_wait_s,
                        help="a queued request waiting longer than this gets 503")
    parser.add_argument("--max-compute-s", type=float, default=defaults.max_compute_s,
                        help="wall-clock budget of one generation; past it the text ends with finish_reason "
                        "'time_limit' (default %(default)s)")
    parser.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes,
                        help="larger request bodies get 413 before they are parsed (default %(default)s)")
    parser.add_argument("--read-timeout-s", type=float, default=defaults.read_timeout_s,
                        help="time a client has to send its request headers, and again its body (default %(default)s)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument("--access-log", action="store_true", help="log every request (off: it costs time under load)")
    args = parser.parse_args(argv)
    args.lm = args.lm or artifact_id(TINY_LM_ONNX)
    args.qa = args.qa or artifact_id(MINILM_SQUAD_ONNX)
    if not 0 < args.port < 65536:
        parser.error(f"--port must be in 1..65535, got {args.port}")
    for flag in ("max_active", "max_batch", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.max_waiting < 0 or args.max_wait_s <= 0:
        parser.error("--max-waiting must be >= 0 and --max-wait-s > 0")
    for flag in ("max_compute_s", "max_body_bytes", "read_timeout_s"):
        if getattr(args, flag) <= 0:
            parser.error(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    if args.scheduler == "continuous" and args.lm_precision not in ("fp32", "int8-static"):  # BATCH_STABLE_PRECISIONS
        parser.error("--scheduler continuous needs --lm-precision fp32 or int8-static: the dynamic int8 graph scales "
                     "its activations per batch, so a request's tokens would depend on who shares its batch (use "
                     "--scheduler serial)")
    if args.rag == "none" and (args.rag_lora or args.rag_documents):
        parser.error("--rag-lora and --rag-documents need --rag INDEX")
    if args.lm == "none" and args.qa == "none" and args.rag == "none":
        parser.error("--lm and --qa are both 'none': nothing to serve")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Start-up allocates hundreds of thousands of objects that live as long as the server (FastAPI and pydantic
    # build their models at import): the cyclic GC would trace them again and again (~70 ms of the 1 s budget on
    # this CPU). Switch it off until the app is built, then freeze those objects out of all later collections
    # (no collection first: it would cost ~50 ms to free the ~1,000 objects that start-up leaves as garbage).
    gc.disable()
    from concurrent.futures import ThreadPoolExecutor

    from pocketlm.hub import ArtifactNotFoundError, resolve
    from pocketlm.serving.models import load_models

    for flag, repo_id in (("--lm", args.lm), ("--qa", args.qa)):
        if repo_id != "none":
            try:
                resolve(repo_id)
            except ArtifactNotFoundError as err:
                raise ArtifactNotFoundError(f"{flag} {repo_id}: {err} (or pass {flag} none)") from None

    # Load the models while the web stack imports: ONNX Runtime builds its sessions in native code that
    # releases the GIL, so on two cores the ~0.3 s of FastAPI/uvicorn imports overlap with them.
    with ThreadPoolExecutor(1) as pool:
        loading = pool.submit(
            load_models, None if args.lm == "none" else args.lm, None if args.qa == "none" else args.qa,
            lm_precision=args.lm_precision, qa_precision=args.qa_precision, threads=args.threads,
        )
        import uvicorn

        from pocketlm.serving.app import create_app
        from pocketlm.serving.http_limits import server_config

        models = loading.result()
    limits = Limits(max_active=args.max_active, max_batch=args.max_batch, max_waiting=args.max_waiting,
                    max_wait_s=args.max_wait_s, max_compute_s=args.max_compute_s,
                    max_body_bytes=args.max_body_bytes, read_timeout_s=args.read_timeout_s)
    app = create_app(models, limits, args.scheduler)
    if args.rag != "none":
        load_rag(app, args)
    gc.freeze()
    gc.enable()
    print(f"pocketlm REST API on http://{args.host}:{args.port} (docs: /docs), pid {os.getpid()}", flush=True)
    uvicorn.Server(server_config(app, args.host, args.port, limits, log_level=args.log_level,
                                 access_log=args.access_log)).run()
    return 0


def load_rag(app, args: argparse.Namespace) -> None:
    """Load the RAG agent (torch, transformers: seconds), index `--rag-documents`, serve it at /v1/chat/completions."""
    from pocketlm import TINY_LM_RAG_LORA
    from pocketlm.errors import ConfigError
    from pocketlm.rag.chain import RagAgent
    from pocketlm.rag.documents import DocumentError, add_documents, folder_files
    from pocketlm.serving.openai_api import serve_rag

    agent = RagAgent.from_pretrained(args.rag, lora=args.rag_lora or TINY_LM_RAG_LORA,
                                     reader=args.rag_reader or artifact_id(MINILM_SQUAD))
    if args.rag_documents:
        try:
            batch = add_documents(agent.retriever, folder_files(args.rag_documents))
        except DocumentError as err:
            raise ConfigError(f"--rag-documents: {err}") from None
        print(batch.summary(), flush=True)
    serve_rag(app, agent)


if __name__ == "__main__":
    run(main)
