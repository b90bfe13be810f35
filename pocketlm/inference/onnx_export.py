"""Export an extractive QA model (the fine-tuned MiniLM, any BERT or DistilBERT checkpoint) to ONNX, plus int8.

optimum does the work: `main_export` traces the model for the `question-answering` task with dynamic
`batch_size` and `sequence_length` axes and checks the ONNX outputs against PyTorch; `ORTQuantizer` applies
ONNX Runtime's dynamic int8 quantisation (weights int8 per channel, activations quantised on the fly), which
needs no calibration data. The folder it writes is self-contained for a torch-free reader: `model.onnx`,
`model_quantized.onnx`, `config.json` and the tokenizer with `tokenizer.json` (loadable by `tokenizers` alone).
"""

from __future__ import annotations

import json
from pathlib import Path

from pocketlm.hub import resolve
from pocketlm.inference.qa_engine import FP32_FILE, INT8_FILE

QA_OUTPUTS = ("start_logits", "end_logits")


def export_question_answering(model_name_or_path: str, output_dir: str | Path, quantize: bool = True) -> Path:
    """Write `model.onnx` (fp32) and, with `quantize`, `model_quantized.onnx` (dynamic int8) into `output_dir`.

    Inputs are `input_ids`, `attention_mask` and `token_type_ids` where the model takes them (DistilBERT does
    not); outputs `start_logits` and `end_logits`, both (batch_size, sequence_length). Returns `output_dir`.
    """
    from optimum.exporters.onnx import main_export

    source = resolve(model_name_or_path)
    output_dir = Path(output_dir)
    # library_name: the offline MiniLM folder also holds sentence-transformers files, which would make
    # optimum export it as a sentence embedder; we want the transformers QA head.
    main_export(source, output_dir, task="question-answering", library_name="transformers", do_validation=True)
    _keep_window_settings(source, output_dir)
    if not (output_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{output_dir}: the tokenizer was not saved as tokenizer.json (a fast tokenizer is needed)")
    if quantize:
        quantize_dynamic_int8(output_dir)
    return output_dir


def quantize_dynamic_int8(folder: str | Path) -> Path:
    """Quantise `<folder>/model.onnx` to `<folder>/model_quantized.onnx` with ONNX Runtime's dynamic int8 scheme."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    folder = Path(folder)
    # The AVX-512 VNNI preset: symmetric int8 weights, per channel (more accurate than per tensor, same speed),
    # no reduced range. The resulting graph (MatMulInteger / DynamicQuantizeLinear) runs on any CPU.
    config = AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True)
    quantizer = ORTQuantizer.from_pretrained(folder, file_name=FP32_FILE)
    quantizer.quantize(config, save_dir=folder, file_suffix="quantized")
    written = folder / INT8_FILE
    if not written.is_file():
        raise FileNotFoundError(f"the quantiser did not write {written}")
    return written


def _keep_window_settings(source: str, output_dir: Path) -> None:
    """Carry the window length and stride the model was trained with into the export's config.json.

    `main_export` rewrites config.json from the model's config, which keeps these extra keys; this is a
    guard for checkpoints whose config was saved by other tools."""
    source_config = Path(source) / "config.json"
    if not source_config.is_file():
        return
    extra = {k: v for k, v in json.loads(source_config.read_text()).items() if k.startswith("qa_")}
    config_file = output_dir / "config.json"
    config = json.loads(config_file.read_text())
    if extra and any(config.get(k) != v for k, v in extra.items()):
        config.update(extra)
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
