"""Shared test setup: offline, artifacts in a temporary hub, and a tiny published LM other tests can load.

Environment variables are set at import, before any test module imports transformers, datasets or gradio.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="pocketlm-tests-"))
os.environ.update(
    {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "TOKENIZERS_PARALLELISM": "false",
        "POCKETLM_HUB_DIR": str(_SESSION_TMP / "hub"),
        "POCKETLM_RUNS_DIR": str(_SESSION_TMP / "runs"),
    }
)

import pytest  # noqa: E402

from pocketlm.data import corpus_folder  # noqa: E402


@pytest.fixture(scope="session")
def corpus_texts() -> list[str]:
    """A dozen real WikiText-2 articles from the mirror (about 200 KB)."""
    return [path.read_text(encoding="utf-8") for path in sorted(corpus_folder().glob("*.txt"))[:12]]


@pytest.fixture(scope="session")
def tiny_tokenizer(corpus_texts):
    """A real byte-level BPE tokenizer (vocab 512) trained on the mirror's articles."""
    from pocketlm.data.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(corpus_texts, vocab_size=512, model_max_length=256)


@pytest.fixture(scope="session")
def tiny_lm_config(tiny_tokenizer):
    from pocketlm.models.transformer_lm import TransformerLMConfig

    return TransformerLMConfig(
        vocab_size=len(tiny_tokenizer), d_model=64, n_layers=2, n_heads=2, d_ff=128, max_seq_len=256,
        bos_token_id=tiny_tokenizer.eos_token_id, eos_token_id=tiny_tokenizer.eos_token_id,
        pad_token_id=tiny_tokenizer.pad_token_id,
    )


@pytest.fixture(scope="session")
def tiny_lm_repo(tiny_tokenizer, tiny_lm_config) -> str:
    """Publish an untrained tiny LM (random weights, real tokenizer) as `pocketlm/tiny-lm` in the test hub.

    Returns the repo id; `pocketlm.hub.resolve` finds it. Tests that need a trained model train their own.
    """
    import torch

    from pocketlm import TINY_LM
    from pocketlm.hub import ModelCardInfo, publish
    from pocketlm.models.transformer_lm import TransformerLM

    torch.manual_seed(0)
    model = TransformerLM(tiny_lm_config)

    def save(folder: Path) -> None:
        model.save_pretrained(folder)
        tiny_tokenizer.save_pretrained(folder)

    card = ModelCardInfo(
        title="tiny-lm (test fixture)", summary="Random weights, for tests.", how_to_load="",
        pipeline_tag="text-generation", eval_dataset="wikitext", eval_dataset_name="WikiText-2",
        eval_split="validation", metrics={},
    )
    publish(TINY_LM, save, card)
    return TINY_LM


@pytest.fixture(scope="session")
def tiny_lm_onnx_repo(tiny_lm_repo, tmp_path_factory) -> str:
    """The tiny LM exported to ONNX (fp32 + int8, KV cache) and published as `pocketlm/tiny-lm-onnx` by
    `training_scripts/export_lm_onnx.py`, as the real one is.

    Its weights are first redrawn wider (std 0.2): at the fixture's init (std 0.02) an untrained model only
    repeats its last token, and the batching and serving tests need continuations that a padding, position
    or cache bug would change.
    """
    import runpy

    import torch

    from pocketlm import TINY_LM_ONNX
    from pocketlm.hub import resolve
    from pocketlm.models.transformer_lm import TransformerLM
    from pocketlm.settings import REPO_ROOT

    torch.manual_seed(0)
    model = TransformerLM.from_pretrained(resolve(tiny_lm_repo))
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.2)
    folder = tmp_path_factory.mktemp("tiny-lm-wide")
    model.save_pretrained(folder)
    for file in Path(resolve(tiny_lm_repo)).glob("*token*"):
        (folder / file.name).write_bytes(file.read_bytes())
    export_main = runpy.run_path(str(REPO_ROOT / "training_scripts" / "export_lm_onnx.py"))["main"]
    assert export_main(["--model_name_or_path", str(folder), "--check_prompts", "3", "--latency_runs", "3"]) == 0
    return TINY_LM_ONNX


@pytest.fixture(scope="session")
def tiny_qa_onnx_repo(tmp_path_factory) -> str:
    """A randomly initialised 2-layer BERT QA model with MiniLM's real tokenizer, exported with
    `export_question_answering` (fp32 + int8) and published as `pocketlm/minilm-squad-onnx`."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering

    from pocketlm import MINILM_SQUAD_ONNX
    from pocketlm.hub import ModelCardInfo, publish, resolve
    from pocketlm.inference.qa_onnx_export import export_question_answering

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=512)
    checkpoint = tmp_path_factory.mktemp("tiny-qa")
    BertForQuestionAnswering(config).save_pretrained(checkpoint)
    AutoTokenizer.from_pretrained(resolve("minilm")).save_pretrained(checkpoint)
    card = ModelCardInfo(
        title="tiny QA export (test fixture)", summary="Random weights, for tests.", how_to_load="",
        pipeline_tag="question-answering", eval_dataset="squad", eval_dataset_name="SQuAD",
        eval_split="validation", metrics={},
    )
    publish(MINILM_SQUAD_ONNX, lambda folder: export_question_answering(str(checkpoint), folder), card)
    return MINILM_SQUAD_ONNX


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def rag_files(tmp_path_factory) -> tuple[Path, Path]:
    """passages.jsonl (50 passages: Super Bowl 50 and Toyota paragraphs) and qa.jsonl (their 19 questions)."""
    from pocketlm.rag.corpus import rag_dev

    passages, questions = rag_dev()
    keep = [p for p in passages if p.id < "val-00-030" or "val-05" <= p.id < "val-05-020"]
    ids = {p.id for p in keep}
    folder = tmp_path_factory.mktemp("rag-data")
    passages_path = _write_jsonl(folder / "passages.jsonl", [p.to_dict() for p in keep])
    qa_path = _write_jsonl(
        folder / "qa.jsonl",
        [{"id": q.id, "question": q.question, "answers": list(q.answers), "passage_id": q.passage_id} for q in questions if q.passage_id in ids],
    )
    return passages_path, qa_path


@pytest.fixture(scope="session")
def launch_corpus(tmp_path_factory) -> Path:
    """A small real prepared corpus for the multi-process launches (tests/launching.py)."""
    from launching import prepare_small_corpus

    return prepare_small_corpus(tmp_path_factory.mktemp("texts"), tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """A 1-layer, 32-wide random BERT with MiniLM's real tokenizer: QA and classifier fine-tuning in seconds."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering

    from pocketlm import BASE_ENCODER
    from pocketlm.hub import resolve

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64)
    BertForQuestionAnswering(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve(BASE_ENCODER)).save_pretrained(folder)
    return str(folder)


@pytest.fixture
def online_hub(tmp_path, monkeypatch):
    """The Hub test double (tests/hub_double.py), reached by this process's `huggingface_hub` — which read its settings
    at import, so they are set on its `constants` — with an empty Hugging Face cache; yields the double's storage."""
    import huggingface_hub.constants as constants

    from hub_double import hub_double

    with hub_double(tmp_path / "hub-storage") as endpoint:
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the double speaks Git LFS (see its docstring)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        yield hub_double.app.state.storage  # the running double's own view of its repos
