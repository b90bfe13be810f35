"""Command line of the suite (`spaces/suite/app.py`): the four Spaces in tabs on the REST API's app, one
process, one set of models. Its own module, apart from `pocketlm.spaces.cli`, so that a single Space's
`app.py` does not reach the suite's imports (what a staged Space carries is what its `app.py` imports).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

from pocketlm.spaces.cli import SUITE, launch, models_or_page, parse_args


def main(argv: list[str] | None = None) -> int:
    """The ONNX models load while gradio imports (native session building releases the GIL); the torch-based
    parts (the benchmark's PyTorch runtime, the RAG agent) load in the background once the server is up, so
    `/qa` and `/generate` answer within seconds of the start. A missing model that no flag named gives the
    missing-models page instead (`pocketlm.spaces.cli.models_or_page`)."""
    started = time.perf_counter()
    args = parse_args(SUITE, argv)
    folders, missing_page = models_or_page(SUITE, args)
    if folders is None:
        launch(missing_page, args)
        return 0
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        from pocketlm.serving.models import load_models

        loading = pool.submit(load_models, folders["lm"], folders["qa"], lm_precision=args.lm_precision,
                              qa_precision=args.qa_precision, threads=args.threads)
        import uvicorn

        from pocketlm.spaces.onnx_benchmark import QABackends
        from pocketlm.spaces.suite import create_suite_app

        models = loading.result()
    both_qa = folders["qa"] and folders["qa_pytorch"]
    backends = QABackends(folders["qa_pytorch"], folders["qa"], args.threads) if both_qa else None
    rag = None
    if folders["rag_index"]:
        from pocketlm.spaces import rag_chat

        rag = rag_chat.from_fetched(args, folders)
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
