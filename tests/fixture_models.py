"""Small models and script runs that several test modules share (imported by name: `tests/` is on the path)."""

from __future__ import annotations

from pathlib import Path


def publish_random_qa_model(repo_id: str, title: str) -> str:
    """Publish a 2-layer BERT QA model (random weights, seeded: the same every time) with MiniLM's real tokenizer as
    `repo_id` in the test hub. Its spans are arbitrary but real computations: enough for a reader or a QA Space."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering

    from pocketlm.hub import publish, resolve

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=512)
    model, tokenizer = BertForQuestionAnswering(config), AutoTokenizer.from_pretrained(resolve("minilm"))

    def save(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    publish(repo_id, save, qa_fixture_card(title))
    return repo_id


def qa_fixture_card(title: str):
    from pocketlm.hub import ModelCardInfo

    return ModelCardInfo(title=title, summary="Random weights, for tests.", how_to_load="",
                         pipeline_tag="question-answering", eval_dataset="squad", eval_dataset_name="SQuAD",
                         eval_split="validation", metrics={})


def run_training_script(name: str, argv: list[str], capsys) -> str:
    """Run `training_scripts/<name>` in this process as `python <name> argv...`; fail with its stderr unless it
    exits with 0; return what it printed."""
    import runpy
    import sys

    from pocketlm.settings import REPO_ROOT

    saved_argv, sys.argv = sys.argv, [name, *argv]
    try:
        runpy.run_path(str(REPO_ROOT / "training_scripts" / name), run_name="__main__")
    except SystemExit as exit_:
        assert exit_.code in (0, None), capsys.readouterr().err
    finally:
        sys.argv = saved_argv
    return capsys.readouterr().out
