"""Load a QA model for one of three backends by name — what the evaluation script and the benchmark share."""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

from pocketlm.hub import resolve
from pocketlm.inference.qa_engine import FP32_FILE, INT8_FILE, OPTIMIZED_FILE, OnnxQuestionAnswerer, QuestionAnswerer

BACKENDS = ("pytorch", "onnxruntime-fp32", "onnxruntime-int8")


def onnx_folder(model: str) -> Path:
    """The ONNX export of `model`: the folder itself when it holds one of the export's graphs, else an export of
    the PyTorch checkpoint it names into a temporary folder (made once per process and checkpoint version)."""
    path = Path(resolve(model))
    if any((path / name).is_file() for name in (FP32_FILE, OPTIMIZED_FILE, INT8_FILE)):
        return path
    weights = sorted(path.glob("*.safetensors"))
    return _export_once(str(path), tuple(w.stat().st_mtime_ns for w in weights))


@lru_cache(maxsize=4)
def _export_once(path: str, version: tuple) -> Path:
    from pocketlm.inference.qa_onnx_export import export_question_answering

    return export_question_answering(path, Path(tempfile.mkdtemp(prefix="pocketlm-qa-onnx-")))


def load_question_answerer(model: str, backend: str, threads: int | None = None, **kwargs) -> QuestionAnswerer:
    """`backend` is one of `BACKENDS`; `threads` sets torch's or ONNX Runtime's intra-op threads alike."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "pytorch":
        import torch

        from pocketlm.inference.qa_torch import TorchQuestionAnswerer

        if threads:
            torch.set_num_threads(threads)
        return TorchQuestionAnswerer.from_pretrained(model, **kwargs)
    return OnnxQuestionAnswerer.from_pretrained(onnx_folder(model), quantized=backend.endswith("int8"), threads=threads, **kwargs)
