"""ONNX export of QA models: a random DistilBERT and a (shortened) real MiniLM, reloaded with onnxruntime."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from pocketlm.data import load_squad
from pocketlm.data.qa import encode_qa, pad_batch, pad_token_id
from pocketlm.hub import resolve
from pocketlm.inference.onnx_export import export_question_answering
from pocketlm.inference.qa_engine import OnnxQuestionAnswerer
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
    """Fused attention quantised (QAttention), every feed-forward output projection left in fp32, the rest int8."""
    import onnx

    ops = [node.op_type for node in onnx.load(str(folder / "model_quantized.onnx")).graph.node]
    layers = json.loads((folder / "config.json").read_text()).get("num_hidden_layers") or json.loads((folder / "config.json").read_text())["n_layers"]
    assert ops.count("QAttention") == layers and "Attention" not in ops
    assert ops.count("MatMul") == layers  # the FFN outputs (qa_outputs and the rest are integer ops)
    assert "DynamicQuantizeMatMul" in ops or "MatMulInteger" in ops


def _check_export(checkpoint, output, squad_records, expected_inputs):
    folder = export_question_answering(str(checkpoint), output)
    assert {"model.onnx", "model_quantized.onnx", "config.json", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert (folder / "model_quantized.onnx").stat().st_size < 0.5 * (folder / "model.onnx").stat().st_size
    _check_int8_recipe(folder)

    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == expected_inputs
    assert [o.name for o in session.get_outputs()] == ["start_logits", "end_logits"]
    assert all(i.shape == ["batch_size", "sequence_length"] for i in session.get_inputs())

    torch_qa = TorchQuestionAnswerer.from_pretrained(str(checkpoint), **SMALL_WINDOWS)
    onnx_qa = OnnxQuestionAnswerer.from_pretrained(folder, threads=1, **SMALL_WINDOWS)
    assert onnx_qa.input_names == torch_qa.input_names == expected_inputs

    # Logits agree for batches of other sizes and lengths than the export's dummy input (dynamic axes).
    features = encode_qa(torch_qa.tokenizer, [r["question"] for r in squad_records], [r["context"] for r in squad_records])
    pad = pad_token_id(torch_qa.tokenizer)
    for indices in ([0], [1, 2, 3], list(range(len(features)))):
        batch = pad_batch(features, indices, pad, expected_inputs)
        for expected, got in zip(torch_qa.logits(batch), onnx_qa.logits(batch)):
            assert expected.shape == got.shape == batch["input_ids"].shape
            assert np.abs(expected - got).max() <= 1e-4

    questions, contexts = [r["question"] for r in squad_records], [r["context"] for r in squad_records]
    torch_answers = torch_qa.answer_batch(questions, contexts)
    onnx_answers = onnx_qa.answer_batch(questions, contexts)
    assert [(a.text, a.start, a.end) for a in onnx_answers] == [(a.text, a.start, a.end) for a in torch_answers]
    assert [a.score for a in onnx_answers] == pytest.approx([a.score for a in torch_answers], abs=1e-4)
    assert all(a.text and contexts[i][a.start : a.end] == a.text for i, a in enumerate(onnx_answers))

    int8 = OnnxQuestionAnswerer.from_pretrained(folder, quantized=True, threads=1, **SMALL_WINDOWS)
    int8_answers = int8.answer_batch(questions, contexts)
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
