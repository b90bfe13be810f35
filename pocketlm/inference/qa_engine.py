"""Answer questions with an extractive QA model: encode → run the model → pick the span, one path for all backends.

`QuestionAnswerer` holds everything but the model call, so PyTorch (`pocketlm.inference.qa_torch`) and
ONNX Runtime (`OnnxQuestionAnswerer`, below) differ in one method and are compared on equal terms by the
evaluation and the latency benchmark. This module imports no torch and no transformers: the REST server
runs `OnnxQuestionAnswerer` with onnxruntime, `tokenizers` and numpy alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from pocketlm.data.qa import MAX_LENGTH, STRIDE, QAFeatures, encode_qa, pad_batch, pad_token_id, qa_tokenizer
from pocketlm.inference.qa_postprocess import Answer, best_span
from pocketlm.inference.squad_metrics import squad_scores

FP32_FILE = "model.onnx"
"""The `torch.onnx` export: standard ONNX operators only, so any ONNX runtime can load it."""
OPTIMIZED_FILE = "model_optimized.onnx"
"""The same fp32 function after ONNX Runtime's transformer fusions (one `Attention` op per layer, bias + GELU):
what the fp32 QA path runs, since ORT does not fuse this export's attention when it loads `model.onnx`."""
INT8_FILE = "model_quantized.onnx"
QA_DISABLED_FUSIONS = ("SkipLayerNormFusion",)
"""ONNX Runtime fusions the QA encoder runs faster without. ORT 1.32's CPU `SkipLayerNormalization` kernel took
4.0 ms of a 16.8 ms int8 call (180 tokens, 2 threads), where the Add + `LayerNormalization` it replaces take
about 1 ms: the call drops to 13.9 ms. The export never fuses it (`quantize_encoder_int8`) and the session
must not fuse it back at load."""


class QuestionAnswerer:
    """Tokenise (question, context) into windows, run the model on batches of windows, return the best span."""

    input_names: Sequence[str] = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(self, tokenizer, max_length: int = MAX_LENGTH, stride: int = STRIDE, batch_size: int = 16):
        self.tokenizer = qa_tokenizer(tokenizer, max_length, stride)
        self.pad_token_id = pad_token_id(self.tokenizer)
        self.batch_size = batch_size

    def logits(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Start and end logits, each (batch, sequence), for a padded batch of features."""
        raise NotImplementedError

    def answer(self, question: str, context: str) -> Answer:
        return self.answer_batch([question], [context])[0]

    def answer_batch(self, questions: Sequence[str], contexts: Sequence[str]) -> list[Answer]:
        """Answers for many pairs. Windows are sorted by length before batching so that dynamic padding wastes little."""
        features = encode_qa(self.tokenizer, questions, contexts)
        start_logits, end_logits = self._all_logits(features)
        per_example: list[list[int]] = [[] for _ in questions]
        for feature, example in enumerate(features.example_index):
            per_example[example].append(feature)
        return [
            best_span(
                [start_logits[f] for f in windows], [end_logits[f] for f in windows],
                [features.offsets[f] for f in windows], context,
            )
            for windows, context in zip(per_example, contexts)
        ]

    def _all_logits(self, features: QAFeatures) -> tuple[list[np.ndarray], list[np.ndarray]]:
        order = sorted(range(len(features)), key=lambda f: len(features.input_ids[f]))
        starts: list[np.ndarray] = [np.empty(0)] * len(features)
        ends: list[np.ndarray] = [np.empty(0)] * len(features)
        for begin in range(0, len(order), self.batch_size):
            indices = order[begin : begin + self.batch_size]
            start, end = self.logits(pad_batch(features, indices, self.pad_token_id, self.input_names))
            for row, f in enumerate(indices):
                width = len(features.input_ids[f])
                starts[f], ends[f] = start[row, :width], end[row, :width]
        return starts, ends


class OnnxQuestionAnswerer(QuestionAnswerer):
    """An ONNX export (`pocketlm.inference.qa_onnx_export.export_question_answering`) run with onnxruntime."""

    def __init__(self, model_path: str | Path, tokenizer, threads: int | None = None, spinning: bool = True, **kwargs):
        from pocketlm.inference.onnx_lm import cpu_session

        super().__init__(tokenizer, **kwargs)
        self.session = cpu_session(model_path, threads, disabled_optimizers=QA_DISABLED_FUSIONS, spinning=spinning)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.model_path = Path(model_path)

    @classmethod
    def from_pretrained(cls, folder: str | Path, quantized: bool = False, threads: int | None = None,
                        spinning: bool = True, **kwargs) -> "OnnxQuestionAnswerer":
        """Load the fp32 (or, with `quantized`, the int8) graph and `tokenizer.json` from an export folder or repo
        id (through `pocketlm.hub.resolve`: the local hub folder first). See `pick_onnx_file` for which fp32 file."""
        from tokenizers import Tokenizer

        from pocketlm.hub import resolve

        folder = Path(resolve(str(folder)))
        model_file = pick_onnx_file(folder, quantized)
        for key, value in window_settings(folder).items():
            kwargs.setdefault(key, value)
        return cls(model_file, Tokenizer.from_file(str(folder / "tokenizer.json")), threads=threads, spinning=spinning,
                   **kwargs)

    def logits(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        start, end = self.session.run(["start_logits", "end_logits"], batch)
        return start, end


def pick_onnx_file(folder: Path, quantized: bool) -> Path:
    """The graph of an export folder (QA or LM) that pocketlm runs: `model_quantized.onnx` for int8; for fp32 the
    fused `model_optimized.onnx` where the export has one (QA exports do), else `model.onnx` (LM exports, and
    exports made by other tools). A clear error naming what the folder holds when the file is missing."""
    from pocketlm.hub import ArtifactNotFoundError

    candidates = [INT8_FILE] if quantized else [OPTIMIZED_FILE, FP32_FILE]
    for name in candidates:
        if (folder / name).is_file():
            return folder / name
    present = sorted(p.name for p in folder.glob("*.onnx"))
    raise ArtifactNotFoundError(f"no {candidates[-1]} in {folder} (the folder has: {', '.join(present) or 'no .onnx file'})")


def window_settings(folder: str | Path) -> dict[str, int]:
    """The window length and stride a model was fine-tuned with (recorded in its config.json by
    `training_scripts/finetune_qa.py`), else the SQuAD defaults."""
    config_file = Path(folder) / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    return {"max_length": int(config.get("qa_max_length", MAX_LENGTH)), "stride": int(config.get("qa_doc_stride", STRIDE))}


def evaluate_squad(answerer: QuestionAnswerer, records: Iterable[dict], chunk: int = 256, progress: bool = True) -> dict[str, float]:
    """EM/F1 (official SQuAD v1.1 normalisation) of `answerer` on records in the Hub's `squad` schema."""
    records = list(records)
    predictions: dict[str, str] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(records), desc="answering", unit="q")
    for begin in range(0, len(records), chunk):
        part = records[begin : begin + chunk]
        answers = answerer.answer_batch([r["question"] for r in part], [r["context"] for r in part])
        predictions.update({r["id"]: a.text for r, a in zip(part, answers)})
        if bar is not None:
            bar.update(len(part))
    if bar is not None:
        bar.close()
    return squad_scores(predictions, ((r["id"], r["answers"]["text"]) for r in records))
