"""Export an extractive QA model (the fine-tuned MiniLM, any BERT or DistilBERT checkpoint) to ONNX, plus int8.

`torch.onnx.export` traces the model with dynamic `batch_size` and `sequence_length` axes, and the graph is
checked against PyTorch before the rest of the folder is written (`pocketlm.inference.torch_onnx`). The folder is self-contained
for a torch-free reader, with `config.json` and the tokenizer as `tokenizer.json` (loadable by `tokenizers`
alone), and holds three graphs of the same model:
- `model.onnx`: fp32, standard ONNX operators (any ONNX runtime);
- `model_optimized.onnx`: fp32 after ONNX Runtime's transformer fusions (`fuse_encoder`), what pocketlm runs;
- `model_quantized.onnx`: the fused graph in dynamic int8, feed-forward outputs smoothed first (`quantize_encoder_int8`).

Why not optimum: `optimum-onnx` 0.1.0 (the latest) requires transformers < 4.58, and its exporter does not even
import under transformers 5 (`get_parameter_dtype` was removed from `transformers.modeling_utils`); what it did
for pocketlm is a trace, ONNX Runtime's fusions and its quantiser, all called directly here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pocketlm.hub import resolve
from pocketlm.inference.qa_engine import FP32_FILE, INT8_FILE, OPTIMIZED_FILE
from pocketlm.inference.smoothing import DEFAULT_ALPHA, smooth_matmuls
from pocketlm.inference.torch_onnx import export_with_torch

QA_OUTPUTS = ("start_logits", "end_logits")
def _qa_graph(model, input_names: Sequence[str]):
    """What the QA graph computes: the model's start and end logits from its token inputs, taken positionally so
    that the graph's inputs come in this order. (A function: torch is imported only when exporting.)"""
    import torch

    class QuestionAnsweringGraph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *tensors):
            out = self.model(**dict(zip(input_names, tensors)))
            return out.start_logits, out.end_logits

    return QuestionAnsweringGraph()


def _qa_inputs(model, batch: int, length: int, padded_row: int | None = None) -> dict:
    import inspect

    import torch

    generator = torch.Generator().manual_seed(batch * 1000 + length)
    ids = torch.randint(0, model.config.vocab_size, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    if padded_row is not None:
        mask[padded_row, length // 2 :] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in inspect.signature(model.forward).parameters:  # DistilBERT takes none
        inputs["token_type_ids"] = (torch.arange(length) >= length // 3).long().expand(batch, -1).contiguous()
    return inputs


def export_question_answering(model_name_or_path: str, output_dir: str | Path, quantize: bool = True) -> Path:
    """Write `model.onnx` and `model_optimized.onnx` (fp32) and, with `quantize`, `model_quantized.onnx` (dynamic
    int8) into `output_dir`, with `config.json` and the tokenizer.

    Inputs are `input_ids`, `attention_mask` and `token_type_ids` where the model takes them (DistilBERT does
    not); outputs `start_logits` and `end_logits`, both (batch_size, sequence_length). Returns `output_dir`.
    """
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    source = resolve(model_name_or_path)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # Eager attention: the matmul-softmax pattern ONNX Runtime's Attention fusion matches (SDPA traces differently).
    model = AutoModelForQuestionAnswering.from_pretrained(source, attn_implementation="eager").eval()
    inputs = _qa_inputs(model, batch=2, length=16, padded_row=0)
    axes = {name: {0: "batch_size", 1: "sequence_length"} for name in (*inputs, *QA_OUTPUTS)}
    export_with_torch(_qa_graph(model, list(inputs)), inputs, output_dir / FP32_FILE, QA_OUTPUTS, axes,
                      checks=[_qa_inputs(model, batch=3, length=37, padded_row=1), _qa_inputs(model, batch=1, length=5)])
    model.config.save_pretrained(output_dir)
    AutoTokenizer.from_pretrained(source).save_pretrained(output_dir)
    _keep_window_settings(source, output_dir)
    if not (output_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{output_dir}: the tokenizer was not saved as tokenizer.json (a fast tokenizer is needed)")
    fuse_encoder(output_dir)
    if quantize:
        quantize_encoder_int8(output_dir)
    return output_dir


GELU_OPS = {"Gelu", "BiasGelu", "FastGelu"}
ENCODER_INT8_OPS = ["MatMul", "Attention", "Gather"]


FeedForward = Literal["smooth", "fp32", "int8"]
CALIBRATION_QUESTIONS = 128


def fuse_encoder(folder: str | Path) -> Path:
    """`<folder>/model.onnx` → `<folder>/model_optimized.onnx`: ONNX Runtime's transformer fusions for a BERT-style
    encoder (`onnxruntime.transformers.optimizer`, level 2, CPU; the settings optimum's `ORTOptimizer` used).

    Each layer's attention becomes one `Attention` op and bias + GELU one `BiasGelu`; residual + LayerNorm are left
    unfused (`pocketlm.inference.qa_engine.QA_DISABLED_FUSIONS` says why), and so are the embeddings' LayerNorm (as
    optimum left them). ONNX Runtime does not find this export's attention pattern by itself at load time; the
    fused graph is faster (`benchmarks/qa_latency.py` times both). The function is unchanged (tests check both graphs within 1e-4 of
    PyTorch). The ops it adds are ONNX Runtime contrib ops, which is why `model.onnx` is kept as well.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    heads = config.get("num_attention_heads") or config["n_heads"]  # DistilBERT names them n_heads and dim
    hidden = config.get("hidden_size") or config["dim"]
    options = FusionOptions("bert")
    options.enable_skip_layer_norm = False
    options.enable_embed_layer_norm = False
    optimized = optimize_model(str(folder / FP32_FILE), "bert", num_heads=heads, hidden_size=hidden, opt_level=2,
                               optimization_options=options, use_gpu=False)
    optimized.save_model_to_file(str(folder / OPTIMIZED_FILE))
    return folder / OPTIMIZED_FILE


def quantize_encoder_int8(
    folder: str | Path,
    feed_forward: FeedForward = "smooth",
    calibration: Sequence[tuple[str, str]] | None = None,
    alpha: float = DEFAULT_ALPHA,
) -> Path:
    """`<folder>/model_optimized.onnx` → `<folder>/model_quantized.onnx` for a BERT-style encoder: dynamic int8.

    onnxruntime's `quantize_dynamic` quantises the fused graph (`fuse_encoder`, run first if its file is missing):
    the projections, the embedding table, and each fused `Attention`, which becomes ONNX Runtime's `QAttention`.
    The feed-forward output projections (the MatMuls that read a GELU's output) have outlier input channels
    that one per-tensor activation scale, chosen on the fly, rounds badly. `feed_forward` says what to do:
    "smooth" (default) moves the outliers into the weights first (`pocketlm.inference.smoothing`, calibrated on
    `calibration` (question, context) pairs: 128 from SQuAD *train* by default) and quantises everything;
    "fp32" leaves those six MatMuls unquantised; "int8" quantises them as they are.
    `benchmarks/qa_latency.py` measures the three on the SQuAD MiniLM: "smooth" is the default because it is as
    fast as "int8" and more accurate than both others.
    """
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if feed_forward not in ("smooth", "fp32", "int8"):
        raise ValueError(f"feed_forward must be 'smooth', 'fp32' or 'int8', not {feed_forward!r}")
    folder = Path(folder)
    fused = folder / OPTIMIZED_FILE
    if not fused.is_file():
        fuse_encoder(folder)
    written = folder / INT8_FILE
    model = onnx.load(str(fused))
    outlier_matmuls = feed_forward_outputs(model)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        source = fused
        if feed_forward == "smooth" and outlier_matmuls:
            batches = calibration_batches(folder, calibration or squad_calibration_pairs(), [i.name for i in model.graph.input])
            smooth_matmuls(model, outlier_matmuls, batches, alpha)
            source = Path(tmp) / "smoothed.onnx"
            onnx.save(model, str(source))
        quantize_dynamic(
            str(source), str(written), weight_type=QuantType.QInt8, per_channel=True,
            op_types_to_quantize=ENCODER_INT8_OPS, nodes_to_exclude=outlier_matmuls if feed_forward == "fp32" else [],
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return written


def squad_calibration_pairs(count: int = CALIBRATION_QUESTIONS) -> list[tuple[str, str]]:
    """(question, context) pairs spread over SQuAD *train* — never the validation set the int8 graph is judged on."""
    from pocketlm.data import load_squad

    train = load_squad("train")
    rows = train.select(range(0, len(train), max(len(train) // count, 1))[:count])
    return list(zip(rows["question"], rows["context"]))


def calibration_batches(folder: Path, pairs: Sequence[tuple[str, str]], input_names: Sequence[str], batch_size: int = 16):
    """The QA windows of `pairs`, tokenised as `OnnxQuestionAnswerer` tokenises them, in padded batches."""
    from tokenizers import Tokenizer

    from pocketlm.data.qa import encode_qa, pad_batch, pad_token_id, qa_tokenizer
    from pocketlm.inference.qa_engine import window_settings

    tokenizer = qa_tokenizer(Tokenizer.from_file(str(folder / "tokenizer.json")), **window_settings(folder))
    features = encode_qa(tokenizer, [q for q, _ in pairs], [c for _, c in pairs])
    for start in range(0, len(features), batch_size):
        yield pad_batch(features, range(start, min(start + batch_size, len(features))), pad_token_id(tokenizer), input_names)


def feed_forward_outputs(model) -> list[str]:
    """Names of the MatMul nodes that read a GELU's output: each layer's feed-forward output projection."""
    produced_by = {output: node.op_type for node in model.graph.node for output in node.output}
    return [node.name for node in model.graph.node if node.op_type == "MatMul" and produced_by.get(node.input[0]) in GELU_OPS]


def _keep_window_settings(source: str, output_dir: Path) -> None:
    """Carry the window length and stride the model was trained with into the export's config.json.

    The export writes config.json from the model's config, which keeps these extra keys; this is a guard for
    checkpoints whose config was saved by other tools."""
    source_config = Path(source) / "config.json"
    if not source_config.is_file():
        return
    extra = {k: v for k, v in json.loads(source_config.read_text()).items() if k.startswith("qa_")}
    config_file = output_dir / "config.json"
    config = json.loads(config_file.read_text())
    if extra and any(config.get(k) != v for k, v in extra.items()):
        config.update(extra)
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def compare_backends(model: str, onnx_dir: str | Path, records: list[dict], threads: int | None = None) -> dict[str, dict]:
    """EM/F1 of the PyTorch model and of its fp32 and int8 exports on the same questions (the int8 check).

    One window at a time, as the server answers and the latency benchmark times: dynamic int8 takes one activation
    range per tensor over a whole batch, padding included, so its score moves by ~1 point with batch composition."""
    from pocketlm.inference.qa_engine import evaluate_squad
    from pocketlm.inference.qa_loading import BACKENDS, load_question_answerer

    scores = {}
    for backend in BACKENDS:
        print(f"scoring {backend} on {len(records)} questions", flush=True)
        answerer = load_question_answerer(model if backend == "pytorch" else str(onnx_dir), backend, threads=threads, batch_size=1)
        scores[backend] = evaluate_squad(answerer, records)
    return scores


def publish_question_answering_onnx(model: str, repo_id: str, records: list[dict], work_dir: str | Path,
                                    threads: int | None = None, push_to_hub: bool = False, token: str | None = None) -> dict:
    """Export `model` (fp32 + int8), score all three backends on `records`, publish the export with a model card."""
    import shutil

    from pocketlm.benchmarking import machine_description
    from pocketlm.hub import ModelCardInfo, publish

    work_dir = Path(work_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    export_question_answering(model, work_dir, quantize=True)
    scores = compare_backends(model, work_dir, records, threads=threads)
    sizes = {name: (work_dir / name).stat().st_size / 2**20 for name in (FP32_FILE, OPTIMIZED_FILE, INT8_FILE)}
    rows = "\n".join(
        f"| {backend} | {s['exact_match']:.2f} | {s['f1']:.2f} |" for backend, s in scores.items()
    )
    metrics = {
        "exact_match": round(scores["onnxruntime-fp32"]["exact_match"], 2),
        "f1": round(scores["onnxruntime-fp32"]["f1"], 2),
        "int8_exact_match": round(scores["onnxruntime-int8"]["exact_match"], 2),
        "int8_f1": round(scores["onnxruntime-int8"]["f1"], 2),
    }
    card = ModelCardInfo(
        title=repo_id.split("/")[-1],
        summary=f"`{model}` exported to ONNX by `torch.onnx` (question answering, dynamic batch and sequence axes): "
        f"`{FP32_FILE}` (fp32, standard ONNX operators, {sizes[FP32_FILE]:.1f} MB), `{OPTIMIZED_FILE}` (the same fp32 "
        f"function after ONNX Runtime's transformer fusions: one `Attention` op per layer, {sizes[OPTIMIZED_FILE]:.1f} MB) and "
        f"`{INT8_FILE}` (the fused graph in dynamic int8, each feed-forward output projection smoothed first (SmoothQuant, "
        f"α {DEFAULT_ALPHA:g}, calibrated on {CALIBRATION_QUESTIONS} SQuAD-train questions), {sizes[INT8_FILE]:.1f} MB), "
        "with `tokenizer.json` so that onnxruntime + `tokenizers` serve it without torch.",
        how_to_load=(
            "from pocketlm.inference.qa_engine import OnnxQuestionAnswerer\n"
            f"qa = OnnxQuestionAnswerer.from_pretrained(\"{repo_id}\", quantized=True)  # a local folder\n"
            "qa.answer(\"Where is the Eiffel Tower?\", \"The Eiffel Tower is in Paris.\").text"
        ),
        pipeline_tag="question-answering",
        eval_dataset="rajpurkar/squad",
        eval_dataset_name="SQuAD v1.1 (validation, pocketlm mirror)",
        eval_split="validation",
        metrics=metrics,
        datasets=["rajpurkar/squad"],
        base_model=model,
        library_name="onnx",
        tags=["onnx", "int8", "question-answering", "squad"],
        sections={
            "EM/F1 of each runtime": (
                f"The same {len(records):,} validation questions, official SQuAD v1.1 normalisation, the same "
                "windows and span selection for every runtime, one window at a time (batch 1, as served) "
                f"(`training_scripts/export_qa_onnx.py --model {model}`):\n\n| runtime | EM | F1 |\n| --- | --- | --- |\n{rows}\n\n"
                f"Measured with {threads or 'all'} threads on {machine_description()}. Latencies: "
                "`benchmarks/qa_latency.py` (see the pocketlm docs, docs/inference.md)."
            )
        },
    )

    def save(folder: Path) -> None:
        shutil.copytree(work_dir, folder, dirs_exist_ok=True)

    publish(repo_id, save, card, push_to_hub=push_to_hub, token=token)
    return {"scores": scores, "sizes_mb": sizes}
