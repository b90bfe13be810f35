"""A Hub token never lands in a file, card, log or error message: a canary token through every path that takes one.

Each training/publish path runs on a tiny model with `--hub_token`/`token=` and `HF_TOKEN` set to a canary, with
`--push_to_hub` where the path has it, against the Hub test double (tests/hub_double.py) in this process. Then
every file under the run folders, the hub folder and the double's storage (what was uploaded) — pickles included
(`training_args.bin`: the Trainer pickles its arguments into each checkpoint) — and everything printed or
logged is searched for the canary. The six training scripts' own `--push_to_hub` runs are searched the same
way in tests/test_hub_roundtrip.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hub_double import HubStorage
from pocketlm.errors import PocketLMError
from pocketlm.hub import ModelCardInfo, publish, push, push_space
from pocketlm.settings import hub_dir, runs_dir

CANARY = "hf_CANARYxq7Z3kP9wLm2"


@pytest.fixture
def canary(monkeypatch, capfd, caplog, online_hub):
    """HF_TOKEN is the canary too; yields a checker that searches folders, the uploads, output, logs and given texts."""
    monkeypatch.setenv("HF_TOKEN", CANARY)
    caplog.set_level(logging.DEBUG)

    def assert_nowhere(*folders: Path, texts=()) -> int:
        searched = 0
        for folder in {Path(f) for f in (*folders, hub_dir(), runs_dir(), online_hub.root)}:
            for path in folder.rglob("*") if folder.exists() else ():
                if path.is_file():
                    searched += 1
                    assert CANARY.encode() not in path.read_bytes(), f"token written to {path}"
        out, err = capfd.readouterr()
        for name, text in [("stdout", out), ("stderr", err), ("logs", caplog.text), *enumerate(texts)]:
            assert CANARY not in str(text), f"token in {name}"
        return searched

    return assert_nowhere


def _card() -> ModelCardInfo:
    return ModelCardInfo(title="t", summary="s", how_to_load="", pipeline_tag="text-generation", eval_dataset="d",
                         eval_dataset_name="d", eval_split="validation", metrics={"v": 1.0})


def _uploaded(storage: HubStorage, repo_id: str, repo_type: str = "model") -> set[str]:
    repo = storage.repo(repo_type, repo_id)
    assert repo is not None, f"{repo_id} was not pushed"
    return set(storage.commit_files(repo, "main")[1])


def test_pretraining_with_a_token_writes_it_nowhere(canary, online_hub, tmp_path, corpus_texts):
    from pocketlm.data.corpus import Document, clean_text, prepare_corpus
    from pocketlm.training.pretrain import PretrainArguments, publish_best, train

    corpus = tmp_path / "corpus"
    prepare_corpus([Document(f"a{i}", clean_text(t)[:4000]) for i, t in enumerate(corpus_texts[:3])], corpus,
                   vocab_size=280, chunk_length=32, validation_ratio=0.25)
    args = PretrainArguments(data_dir=str(corpus), output_dir=str(tmp_path / "run"), d_model=32, n_layers=1, n_heads=2,
                             d_ff=64, max_steps=2, save_steps=1, logging_steps=1, per_device_train_batch_size=2,
                             warmup_steps=1, eval_max_chunks=2, generation_tokens=4, generation_prompts=1,
                             mixed_precision="no", repo_id="pocketlm/canary-lm", push_to_hub=True, hub_token=CANARY)
    result = train(args)
    publish_best(args, result)
    assert (hub_dir() / "pocketlm/canary-lm/pretrain_args.json").is_file()  # the arguments are published...
    assert _uploaded(online_hub, "pocketlm/canary-lm") >= {"pretrain_args.json", "model.safetensors", "README.md"}
    assert canary(tmp_path) > 10  # ...without the token, locally and on the Hub


def _training_args(output_dir: Path, **overrides):
    from transformers import TrainingArguments

    return TrainingArguments(**{
        "output_dir": str(output_dir), "max_steps": 1, "save_strategy": "steps", "save_steps": 1, "report_to": "none",
        "use_cpu": True, "disable_tqdm": True, "per_device_train_batch_size": 4, "push_to_hub": True,
        "hub_token": CANARY, **overrides})


def test_qa_fine_tuning_with_a_token_writes_it_nowhere(canary, online_hub, tiny_bert, tmp_path):
    from pocketlm.training.qa import QAArguments, finetune_question_answering

    args = QAArguments(model_name_or_path=tiny_bert, max_length=64, doc_stride=16, max_train_samples=4,
                       max_eval_samples=2, eval_loss_samples=2, output_repo="pocketlm/canary-qa")
    finetune_question_answering(args, _training_args(tmp_path, eval_strategy="no"))
    assert (tmp_path / "checkpoint-1" / "training_args.bin").is_file()  # the pickle is searched too
    assert {"training_args.json", "model.safetensors"} <= _uploaded(online_hub, "pocketlm/canary-qa")
    assert canary(tmp_path) > 10


def test_classifier_fine_tuning_with_a_token_writes_it_nowhere(canary, online_hub, tiny_bert, tmp_path):
    from pocketlm.data.classification import ClassificationDataArguments
    from pocketlm.models.peft_classifier import ClassifierSpec
    from pocketlm.training.classifier import RegularisationArguments
    from pocketlm.training.finetune import finetune_and_publish

    spec = ClassifierSpec(model_name_or_path=tiny_bert, mixout_p=0.0)
    data = ClassificationDataArguments(max_train_samples=8, max_eval_samples=8)
    finetune_and_publish(spec, data, RegularisationArguments(early_stopping_patience=0, awp_eps=0.0),
                         _training_args(tmp_path, eval_strategy="no"), "pocketlm/canary-classifier")
    assert (hub_dir() / "pocketlm/canary-classifier/training_args.json").is_file()
    assert "training_args.json" in _uploaded(online_hub, "pocketlm/canary-classifier")
    assert canary(tmp_path) > 10


class _EchoingHub:
    """A stand-in for `huggingface_hub.HfApi` whose every call fails with an error that echoes the token."""

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        raise RuntimeError(f"401 Client Error: invalid credentials {self.token} for url")


def test_publish_and_push_space_upload_no_token(canary, online_hub, tmp_path):
    publish("pocketlm/canary-push", lambda folder: (folder / "w.txt").write_text("w"), _card(), push_to_hub=True, token=CANARY)
    assert _uploaded(online_hub, "pocketlm/canary-push") == {"w.txt", "README.md", "metrics.json", "provenance.json"}
    space = tmp_path / "space"
    space.mkdir()
    (space / "app.py").write_text("print('hi')\n")
    (space / "README.md").write_text("---\nsdk: gradio\napp_file: app.py\n---\n")
    push_space(space, "pocketlm/canary-space", token=CANARY)
    assert _uploaded(online_hub, "pocketlm/canary-space", "space") == {"app.py", "README.md"}
    assert online_hub.repo("space", "pocketlm/canary-space")["sdk"] == "gradio"
    canary(tmp_path)


def test_push_masks_a_token_that_an_error_echoes(canary, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", _EchoingHub)
    publish("pocketlm/canary-push", lambda folder: (folder / "w.txt").write_text("w"), _card())
    with pytest.raises(PocketLMError, match="<redacted> for url") as err:
        push(hub_dir() / "pocketlm/canary-push", "pocketlm/canary-push", token=CANARY)
    assert err.value.__suppress_context__  # the original exception, which carries the token, is not chained
    canary(texts=[err.value, repr(err.value)])


def test_argument_dumps_redact_credentials():
    from pocketlm.io import without_secrets

    dumped = without_secrets({"hub_token": CANARY, "token": "anything", "pad_token_id": 0, "pad_token": "<pad>",
                              "note": f"pushed with {CANARY}", "nested": [{"hf_token": "x"}]})
    assert dumped == {"hub_token": "<redacted>", "token": "<redacted>", "pad_token_id": 0, "pad_token": "<pad>",
                      "note": "pushed with <redacted>", "nested": [{"hf_token": "<redacted>"}]}
