"""ONNX export of QA models: a random DistilBERT and a (shortened) real MiniLM, reloaded with onnxruntime."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from pocketlm.data import load_squad
from pocketlm.data.qa import encode_qa, pad_batch, pad_token_id
from pocketlm.hub import resolve
from pocketlm.inference.qa_onnx_export import export_question_answering
from pocketlm.inference.qa_engine import OnnxQuestionAnswerer, pick_onnx_file
from pocketlm.inference.qa_torch import TorchQuestionAnswerer

SMALL_WINDOWS = {"max_length": 96, "stride": 32}  # short windows, so that long contexts span several features


@pytest.fixture(scope="module")
def squad_records():
    return load_squad("validation").select(range(0, 400, 40)).to_list()


def _save_checkpoint(model, folder):
    from transformers import AutoTokenizer

    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve("minilm")).save_pretrained(folder)  # BERT uncased vocab, as DistilBERT's
    return folder


@pytest.fixture(scope="module")
def distilbert_checkpoint(tmp_path_factory):
    from transformers import DistilBertConfig, DistilBertForQuestionAnswering

    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=30522, dim=64, n_layers=2, n_heads=2, hidden_dim=128, max_position_embeddings=512)
    return _save_checkpoint(DistilBertForQuestionAnswering(config), tmp_path_factory.mktemp("distilbert"))


@pytest.fixture(scope="module")
def minilm_checkpoint(tmp_path_factory):
    """The real MiniLM's weights, cut to its first 2 layers to keep the test fast, with a seeded QA head."""
    from transformers import AutoModelForQuestionAnswering

    torch.manual_seed(0)
    model = AutoModelForQuestionAnswering.from_pretrained(resolve("minilm"), num_hidden_layers=2)
    torch.nn.init.normal_(model.qa_outputs.weight, std=0.5)
    return _save_checkpoint(model, tmp_path_factory.mktemp("minilm-qa"))


def _check_int8_recipe(folder):
    """Fused attention quantised (QAttention), each feed-forward output smoothed (one Mul) then int8, no fp32 MatMul."""
    import onnx

    nodes = onnx.load(str(folder / "model_quantized.onnx")).graph.node
    ops = [node.op_type for node in nodes]
    config = json.loads((folder / "config.json").read_text())
    layers = config.get("num_hidden_layers") or config["n_layers"]
    assert ops.count("QAttention") == layers and "Attention" not in ops
    assert "MatMul" not in ops and ("DynamicQuantizeMatMul" in ops or "MatMulInteger" in ops)
    assert "SkipLayerNormalization" not in ops and "LayerNormalization" in ops  # the slow fused kernel is avoided
    assert sum(node.op_type == "Mul" and node.name.endswith("/smooth") for node in nodes) == layers


def _check_fused_graph(folder):
    """The fp32 graph pocketlm runs has one fused Attention per layer, and keeps residual + LayerNorm apart."""
    import onnx

    ops = [node.op_type for node in onnx.load(str(folder / "model_optimized.onnx")).graph.node]
    config = json.loads((folder / "config.json").read_text())
    assert ops.count("Attention") == (config.get("num_hidden_layers") or config["n_layers"])
    assert "SkipLayerNormalization" not in ops and "Softmax" not in ops


def _check_session_keeps_layer_norm_unfused(folder, runs):
    """The graph ONNX Runtime actually runs (what `cpu_session` caches after its own optimisations, here in a
    fresh runs folder) has no SkipLayerNormalization: the session does not fuse back what the export left apart."""
    import os
    from unittest import mock

    import onnx

    with mock.patch.dict(os.environ, {"POCKETLM_RUNS_DIR": str(runs)}):
        OnnxQuestionAnswerer.from_pretrained(folder, quantized=True, threads=1)
    [cached] = (runs / "ort-cache").glob("*.onnx")
    ops = {node.op_type for node in onnx.load(str(cached)).graph.node}
    assert "SkipLayerNormalization" not in ops and "QAttention" in ops


def _check_export(checkpoint, output, squad_records, expected_inputs):
    folder = export_question_answering(str(checkpoint), output)
    assert {"model.onnx", "model_optimized.onnx", "model_quantized.onnx", "config.json", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert (folder / "model_quantized.onnx").stat().st_size < 0.5 * (folder / "model.onnx").stat().st_size
    _check_fused_graph(folder)
    _check_int8_recipe(folder)

    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == expected_inputs
    assert [o.name for o in session.get_outputs()] == ["start_logits", "end_logits"]
    assert all(i.shape == ["batch_size", "sequence_length"] for i in session.get_inputs())

    torch_qa = TorchQuestionAnswerer.from_pretrained(str(checkpoint), **SMALL_WINDOWS)
    onnx_qa = OnnxQuestionAnswerer.from_pretrained(folder, threads=1, **SMALL_WINDOWS)
    assert onnx_qa.model_path.name == "model_optimized.onnx"  # the fused graph is what runs
    assert onnx_qa.input_names == torch_qa.input_names == expected_inputs

    # Logits of both fp32 graphs agree for batches of other sizes and lengths than the export's dummy input
    # (dynamic axes), padding included.
    features = encode_qa(torch_qa.tokenizer, [r["question"] for r in squad_records], [r["context"] for r in squad_records])
    pad = pad_token_id(torch_qa.tokenizer)
    for indices in ([0], [1, 2, 3], list(range(len(features)))):
        batch = pad_batch(features, indices, pad, expected_inputs)
        for expected, fused, plain in zip(torch_qa.logits(batch), onnx_qa.logits(batch), session.run(None, batch)):
            assert expected.shape == fused.shape == plain.shape == batch["input_ids"].shape
            assert np.abs(expected - fused).max() <= 1e-4 and np.abs(expected - plain).max() <= 1e-4

    questions, contexts = [r["question"] for r in squad_records], [r["context"] for r in squad_records]
    torch_answers = torch_qa.answer_batch(questions, contexts)
    onnx_answers = onnx_qa.answer_batch(questions, contexts)
    assert [(a.text, a.start, a.end) for a in onnx_answers] == [(a.text, a.start, a.end) for a in torch_answers]
    assert [a.score for a in onnx_answers] == pytest.approx([a.score for a in torch_answers], abs=1e-4)
    assert all(a.text and contexts[i][a.start : a.end] == a.text for i, a in enumerate(onnx_answers))

    int8 = OnnxQuestionAnswerer.from_pretrained(folder, quantized=True, threads=1, **SMALL_WINDOWS)
    int8_answers = int8.answer_batch(questions, contexts)
    _check_session_keeps_layer_norm_unfused(folder, Path(output).parent / "runs")
    assert len(int8_answers) == len(questions) and all(contexts[i][a.start : a.end] == a.text for i, a in enumerate(int8_answers))
    return folder


def test_distilbert_export_matches_pytorch(distilbert_checkpoint, tmp_path, squad_records):
    folder = _check_export(distilbert_checkpoint, tmp_path / "onnx", squad_records, ["input_ids", "attention_mask"])
    assert json.loads((folder / "config.json").read_text())["model_type"] == "distilbert"


def test_minilm_export_matches_pytorch_and_loads_with_tokenizers_alone(minilm_checkpoint, tmp_path, squad_records):
    folder = _check_export(minilm_checkpoint, tmp_path / "onnx", squad_records, ["input_ids", "attention_mask", "token_type_ids"])
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert tokenizer.encode("What is ONNX?").tokens[:2] == ["[CLS]", "what"]


def test_smoothing_keeps_the_fp32_function_and_flattens_outlier_channels(minilm_checkpoint, tmp_path, squad_records):
    """SmoothQuant on the feed-forward outputs: same logits in fp32; the MatMul inputs' channel ranges evened out."""
    import onnx

    from pocketlm.inference.qa_onnx_export import calibration_batches, feed_forward_outputs
    from pocketlm.inference.smoothing import activation_max, matmul_inputs, smooth_matmuls

    folder = export_question_answering(str(minilm_checkpoint), tmp_path / "onnx", quantize=False)
    assert not (folder / "model_quantized.onnx").exists()
    model = onnx.load(str(folder / "model_optimized.onnx"))
    names = [i.name for i in model.graph.input]
    batches = list(calibration_batches(folder, [(r["question"], r["context"]) for r in squad_records], names))
    matmuls = feed_forward_outputs(model)
    assert len(matmuls) == 2  # one per layer of the 2-layer MiniLM
    before = activation_max(model, matmul_inputs(model, matmuls), batches)

    smoothed = onnx.ModelProto()
    smoothed.CopyFrom(model)
    smooth_matmuls(smoothed, matmuls, batches, alpha=0.8)
    after = activation_max(smoothed, matmul_inputs(smoothed, matmuls), batches)
    for b, a in zip(before, after):
        assert a.max() / np.median(a) < b.max() / np.median(b) / 2  # the outlier channels are much closer to the rest

    runs = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (model, smoothed)]
    for batch in batches[:2]:
        for expected, got in zip(*(session.run(None, batch) for session in runs)):
            assert np.abs(expected - got).max() <= 1e-3 * max(1.0, np.abs(expected).max())
    with pytest.raises(ValueError, match="alpha"):
        smooth_matmuls(smoothed, matmuls, batches, alpha=1.5)


def test_fp32_runs_the_fused_graph_where_the_export_has_one(tmp_path):
    """Exports by other tools have only model.onnx; pocketlm's also have model_optimized.onnx, preferred for fp32."""
    from pocketlm.hub import ArtifactNotFoundError

    with pytest.raises(ArtifactNotFoundError, match="model.onnx"):
        pick_onnx_file(tmp_path, quantized=False)
    (tmp_path / "model.onnx").write_bytes(b"")
    assert pick_onnx_file(tmp_path, quantized=False).name == "model.onnx"
    (tmp_path / "model_optimized.onnx").write_bytes(b"")
    assert pick_onnx_file(tmp_path, quantized=False).name == "model_optimized.onnx"
    with pytest.raises(ArtifactNotFoundError, match="model_quantized.onnx"):
        pick_onnx_file(tmp_path, quantized=True)
