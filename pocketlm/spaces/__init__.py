"""The Gradio Spaces: one small module per Space, each with `render(...)` (lays its UI out in the current
Blocks context) and `build(...)` (a standalone `gr.Blocks`), so `spaces/<name>/app.py`, the suite
(`pocketlm.spaces.suite`, four tabs mounted on the REST API's FastAPI app) and the tests share one builder.

Importing this package is cheap; gradio is imported by the Space modules themselves, after the line below:
analytics off in code, not only where the Makefile or the tests set it (`common.page` also passes
`analytics_enabled=False` to every page it builds).
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

SPACE_TITLES = {
    "text_generation": "Text generation",
    "question_answering": "Question answering",
    "onnx_benchmark": "ONNX vs PyTorch",
    "rag_chat": "RAG chat",
}
"""Each Space's folder/module name and its title (the suite's tab label)."""
SPACE_NAMES = tuple(SPACE_TITLES)
