"""The suite: the four Spaces as tabs of one page, mounted on the REST API's FastAPI app.

`create_suite_app` builds the REST app first (`pocketlm.serving.app.create_app`: `/health`, `/generate`,
`/qa`, `/docs`...) and mounts the Gradio page at `/` after those routes, so Starlette matches the REST
routes first and one process serves both from the same loaded runtimes; the UI's model calls take the
REST app's own compute slots (`ComputeGuard(app.state.admission)`).
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from fastapi import FastAPI

from pocketlm.serving.admission import Limits
from pocketlm.serving.app import create_app
from pocketlm.serving.models import ServingModels
from pocketlm.spaces import onnx_benchmark, question_answering, text_generation
from pocketlm.spaces.common import MAX_UPLOAD_BYTES, ComputeGuard, page, queued
from pocketlm.spaces.onnx_benchmark import QABackends

TITLE = "pocketlm Spaces"
GRADIO_PATH = "/"


def build_suite(models: ServingModels, backends: QABackends | None, rag: Any = None, guard: ComputeGuard | None = None) -> gr.Blocks:
    """The Spaces whose models are loaded, one tab each (a missing model leaves its tab out)."""
    guard = guard or ComputeGuard()
    with page(TITLE) as suite:
        gr.Markdown(
            f"# {TITLE}\nThe models pocketlm builds, served on this CPU. The same process serves the REST API: "
            "[`/docs`](/docs) · [`/health`](/health)."
        )
        with gr.Tabs():
            if models.lm is not None:
                with gr.Tab(text_generation.TITLE, id="text_generation"):
                    text_generation.render(models.lm, guard)
            if models.qa is not None:
                with gr.Tab(question_answering.TITLE, id="question_answering"):
                    question_answering.render(models.qa, guard)
            if backends is not None:
                with gr.Tab(onnx_benchmark.TITLE, id="onnx_benchmark"):
                    onnx_benchmark.render(backends, guard)
            if rag is not None:
                from pocketlm.spaces import rag_chat

                with gr.Tab(rag_chat.TITLE, id="rag_chat"):
                    rag_chat.render(rag, guard)
    return suite


def create_suite_app(models: ServingModels, backends: QABackends | None = None, rag: Any = None,
                     limits: Limits | None = None) -> FastAPI:
    """The REST app with the suite mounted at `/`: the REST app's limits (body size, read timeout) cover the
    page's routes too, the page's queue is bounded like the REST queue, and uploads are off — except, with the
    RAG chat, documents up to its per-file cap."""
    limits = limits or Limits()
    app = create_app(models, limits)  # REST routes first: they take precedence over the mount below
    suite = queued(build_suite(models, backends, rag, ComputeGuard(app.state.admission)), limits)
    return gr.mount_gradio_app(app, suite, path=GRADIO_PATH, ssr_mode=False, show_error=True, footer_links=["api"],
                               max_file_size=MAX_UPLOAD_BYTES if rag is None else _rag_upload_bytes())


def _rag_upload_bytes() -> int:
    from pocketlm.spaces.rag_chat import UPLOAD_BYTES

    return UPLOAD_BYTES
