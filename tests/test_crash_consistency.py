"""Faults inside every writer leave the old complete artifact or the new one, and the next run goes on.

Two kinds of fault:
* a full disk: `os.fsync` or `os.replace` (the calls that make a write durable and visible) raise
  `OSError(ENOSPC)` at their 1st, 2nd, ... call — every point a writer reaches — and after each the artifact
  on disk must load whole, as the previous version or the new one, and the next write must succeed;
* a real `kill -9` of a subprocess at a chosen rename or save, after which the next run resumes (or says in
  one line what to delete).
Each writer is run on a tiny artifact so that every injection point costs milliseconds.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from pocketlm.hub import ModelCardInfo, publish, resolve
from pocketlm.io import retired_path, write_dir
from pocketlm.settings import REPO_ROOT, hub_dir

ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


class _Fault:
    fired = False


@contextmanager
def disk_full_at(op: str, n: int):
    """`os.<op>` raises ENOSPC on its n-th call (0-based) inside the block; `.fired` says whether it came."""
    real, calls, fault = getattr(os, op), [0], _Fault()

    def failing(*args, **kwargs):
        calls[0] += 1
        if calls[0] - 1 == n:
            fault.fired = True
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return real(*args, **kwargs)

    setattr(os, op, failing)
    try:
        yield fault
    finally:
        setattr(os, op, real)


def inject_everywhere(write, check) -> int:
    """Run `write(version)` with ENOSPC at each fsync, then at each replace it reaches; `check(version)` after every
    attempt (the attempt may or may not have landed). Returns how many fault points were exercised."""
    version, points = 1, 0
    for op in ("fsync", "replace"):
        n = 0
        while True:
            version += 1
            with disk_full_at(op, n) as fault:
                try:
                    write(version)
                except OSError as err:
                    assert err.errno == errno.ENOSPC, err
            check(version)
            if not fault.fired:  # the write ran to the end: every point of this kind was covered
                break
            n, points = n + 1, points + 1
    return points


def no_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".old" in p.name or ".staging" in p.name or ".tmp" in p.name)


def _card() -> ModelCardInfo:
    return ModelCardInfo(title="t", summary="s", how_to_load="", pipeline_tag="text-generation", eval_dataset="d",
                         eval_dataset_name="d", eval_split="validation", metrics={"v": 0.0})


# ---------------------------------------------------------------- publish (and the FAISS index it carries)


def test_publish_survives_a_full_disk_at_every_point():
    repo = "pocketlm/crash-publish"

    def save(version):
        def write(folder):
            for name in ("a.txt", "b.txt"):
                (folder / name).write_text(str(version))
        return write

    publish(repo, save(1), _card())

    def check(version):
        folder = Path(resolve(repo))
        a, b = (folder / "a.txt").read_text(), (folder / "b.txt").read_text()
        assert a == b and 1 <= int(a) <= version, (a, b)  # one version, whole
        assert (folder / "README.md").is_file() and (folder / "metrics.json").is_file()

    assert inject_everywhere(lambda v: publish(repo, save(v), _card()), check) >= 4
    assert no_leftovers(hub_dir() / "pocketlm") == []


def test_published_faiss_index_is_whole_after_a_full_disk():
    from pocketlm.rag.corpus import Passage
    from pocketlm.rag.index import IndexSpec, PassageIndex

    repo = "pocketlm/crash-index"

    def write(version):
        rng = np.random.default_rng(version)
        vectors = rng.normal(size=(version + 3, 8)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        passages = [Passage(f"p{i}", "t", f"v{version} text {i}") for i in range(len(vectors))]
        index = PassageIndex.build(vectors, passages, IndexSpec("flat"), "test-encoder")
        publish(repo, lambda folder: index.save(folder), _card())

    write(1)

    def check(version):
        index = PassageIndex.load(resolve(repo))
        assert index.index.ntotal == len(index.passages) and index.passages[0].text.startswith(f"v{index.index.ntotal - 3} ")

    assert inject_everywhere(write, check) >= 4


def test_publish_killed_between_its_renames_is_restored_on_the_next_read():
    repo = "pocketlm/crash-killed"
    publish(repo, lambda folder: (folder / "v.txt").write_text("1"), _card())
    script = textwrap.dedent(f"""
        import os, signal
        from pocketlm.hub import ModelCardInfo, publish
        real = os.replace
        def replace(src, dst):
            real(src, dst)
            if str(dst).endswith(".old"):  # the old copy is retired, the new one not yet renamed in
                os.kill(os.getpid(), signal.SIGKILL)
        os.replace = replace
        card = ModelCardInfo(title="t", summary="s", how_to_load="", pipeline_tag="text-generation", eval_dataset="d",
                             eval_dataset_name="d", eval_split="validation", metrics={{}})
        publish({repo!r}, lambda folder: (folder / "v.txt").write_text("2"), card)
    """)
    result = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr
    target = hub_dir() / repo
    assert not target.exists() and retired_path(target).is_dir()  # the state the kill left
    assert (Path(resolve(repo)) / "v.txt").read_text() == "1"  # the reader puts the old copy back
    publish(repo, lambda folder: (folder / "v.txt").write_text("3"), _card())
    assert (target / "v.txt").read_text() == "3" and no_leftovers(target.parent) == []


# ---------------------------------------------------------------- pretraining: `last` and `best`


@pytest.fixture
def accelerated(tiny_lm_config):
    from accelerate import Accelerator

    from pocketlm.models.transformer_lm import TransformerLM

    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    model = TransformerLM(tiny_lm_config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model, optimizer


def _stamp(model, version: int) -> None:
    """Make the weights say which version they are (so weights and progress can be checked against each other)."""
    with torch.no_grad():
        next(model.parameters()).fill_(float(version))


def test_pretraining_last_checkpoint_survives_a_full_disk_at_every_point(accelerated, tmp_path):
    from transformers import TrainerState

    from pocketlm.training.pretrain import PretrainArguments, load_checkpoint, save_checkpoint

    accelerator, model, _ = accelerated
    args = PretrainArguments(output_dir=str(tmp_path), data_dir=str(tmp_path / "corpus"))

    def write(version):
        _stamp(model, version)
        state = TrainerState(global_step=version)
        save_checkpoint(accelerator, tmp_path, state, {"args": args.training_fields(), "version": version})

    write(1)

    def check(version):
        state, progress = load_checkpoint(accelerator, tmp_path, args)
        assert state.global_step == progress["version"] <= version
        assert next(model.parameters()).flatten()[0].item() == progress["version"]  # weights of the same version

    assert inject_everywhere(write, check) >= 6
    assert no_leftovers(tmp_path) == [".last.staging"] or no_leftovers(tmp_path) == []


def test_best_checkpoint_survives_a_full_disk_at_every_point(accelerated, tiny_tokenizer, tmp_path):
    from transformers import TrainerControl, TrainerState

    from pocketlm.models.transformer_lm import TransformerLM
    from pocketlm.training.callbacks import BestCheckpointCallback

    accelerator, model, _ = accelerated
    model = accelerator.unwrap_model(model)
    callback = BestCheckpointCallback(tmp_path / "best")

    def write(version):
        _stamp(model, version)
        state = TrainerState(global_step=version)
        callback.on_evaluate(None, state, TrainerControl(), metrics={"eval_ppl": 100.0 - version}, model=model,
                             processing_class=tiny_tokenizer)

    write(1)

    def check(version):
        best = tmp_path / "best"
        step = json.loads((best / "best_metrics.json").read_text())["step"]
        loaded = TransformerLM.from_pretrained(best)
        assert next(loaded.parameters()).flatten()[0].item() == step and (best / "tokenizer.json").is_file()

    assert inject_everywhere(write, check) >= 6


PRETRAIN = dict(d_model=32, n_layers=1, n_heads=2, d_ff=64, max_steps=3, save_steps=1, logging_steps=1,
                per_device_train_batch_size=2, warmup_steps=1, eval_max_chunks=2, generation_tokens=4,
                generation_prompts=1, mixed_precision="no", publish=False)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory, corpus_texts) -> Path:
    from pocketlm.data.corpus import Document, clean_text, prepare_corpus

    folder = tmp_path_factory.mktemp("crash-corpus") / "corpus"
    documents = [Document(f"a{i}", clean_text(text)[:6000]) for i, text in enumerate(corpus_texts[:4])]
    prepare_corpus(documents, folder, vocab_size=300, chunk_length=32, validation_ratio=0.25)
    return folder


@pytest.mark.slow
def test_pretraining_killed_mid_swap_resumes_instead_of_restarting(small_corpus, tmp_path, capsys):
    """The issue's case: a kill between the two renames of `last` left no `last`; the next run started at step 0."""
    from pocketlm.training.pretrain import PretrainArguments, train

    out = tmp_path / "pretrain"
    kill_at_second_swap = textwrap.dedent(f"""
        import os, signal
        from pocketlm.training.pretrain import PretrainArguments, train
        real = os.replace
        def replace(src, dst):
            real(src, dst)
            if str(dst).endswith(".last.old"):  # step 1's `last` retired, step 2's not yet renamed in
                os.kill(os.getpid(), signal.SIGKILL)
        os.replace = replace
        train(PretrainArguments(data_dir={str(small_corpus)!r}, output_dir={str(out)!r}, **{PRETRAIN!r}))
    """)
    killed = subprocess.run([sys.executable, "-c", kill_at_second_swap], env=ENV, capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (out / "last").exists() and (out / ".last.old").is_dir()  # what the old replace_dir then lost

    result = train(PretrainArguments(data_dir=str(small_corpus), output_dir=str(out), **PRETRAIN))
    printed = capsys.readouterr().out
    assert "restored" in printed and f"resuming from {out / 'last'}: step 1" in printed
    assert result.summary["steps"] == 3 and no_leftovers(out) == []


def test_pretraining_refuses_to_restart_over_a_previous_run_in_one_line(tmp_path):
    from pocketlm.training.checkpoints import ResumeError, pretrain_resume_point

    assert pretrain_resume_point(tmp_path) is None  # a new folder: start
    (tmp_path / "best").mkdir()
    with pytest.raises(ResumeError) as err:
        pretrain_resume_point(tmp_path)
    message = str(err.value)
    assert "\n" not in message and "holds a previous run (best)" in message and "--resume false" in message
    (tmp_path / "last").mkdir()  # a `last` without its completion marker (progress.json)
    with pytest.raises(ResumeError, match=r"last is incomplete \(no progress.json\): delete"):
        pretrain_resume_point(tmp_path)


# ---------------------------------------------------------------- corpus, query adapter, ORT cache


def test_prepared_corpus_is_one_version_after_a_full_disk(corpus_texts, tmp_path):
    from pocketlm.data.corpus import Document, clean_text, prepare_corpus

    documents = [Document(f"a{i}", clean_text(text)[:3000]) for i, text in enumerate(corpus_texts[:2])]
    out = tmp_path / "corpus"

    def write(version):
        prepare_corpus(documents, out, vocab_size=280, chunk_length=8 + version, validation_ratio=0.3)

    write(1)

    def check(version):
        stats = json.loads((out / "stats.json").read_text())
        length = stats["train"]["length"]
        first = json.loads((out / "train.jsonl").read_text().splitlines()[0])
        tokenizer_config = json.loads((out / "tokenizer" / "tokenizer_config.json").read_text())
        assert len(first["input_ids"]) == length == tokenizer_config["model_max_length"]  # one version throughout

    assert inject_everywhere(write, check) >= 6
    (out / "notes.txt").write_text("mine")
    from pocketlm.data.corpus import CorpusError

    with pytest.raises(CorpusError, match="holds other files \\(notes.txt\\)"):  # never swaps away a foreign folder
        write(99)


def test_query_adapter_weights_are_the_completion_marker(tmp_path):
    from pocketlm.rag.query_adapter import CONFIG_NAME, QueryAdapter

    def write(version):
        adapter = QueryAdapter(dim=8, bottleneck=version)
        with torch.no_grad():
            adapter.down.weight.fill_(float(version))
        adapter.save(tmp_path, trained_from=f"v{version}")

    write(1)

    def check(version):
        adapter = QueryAdapter.load(tmp_path)
        assert adapter.down.weight.flatten()[0].item() == adapter.bottleneck <= version  # sizes and values agree

    inject_everywhere(write, check)
    # The config is written first: a kill after it and before the weights leaves the previous adapter loadable.
    json_version = json.loads((tmp_path / CONFIG_NAME).read_text())["bottleneck"]
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"dim": 8, "bottleneck": json_version + 5}))
    assert QueryAdapter.load(tmp_path).bottleneck == json_version


@pytest.fixture
def tiny_onnx(tmp_path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])
    one = helper.make_tensor("one", TensorProto.FLOAT, [4], [1.0] * 4)
    graph = helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"])], "g", [x], [y], [one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    return path


def _cache_files(model: Path) -> list[Path]:
    import hashlib

    from pocketlm.settings import runs_dir

    graph = hashlib.sha1(f"{model.resolve()}|{[]}".encode()).hexdigest()[:12]  # as cpu_session keys it
    return sorted((runs_dir() / "ort-cache").glob(f"{model.stem}-{graph}-*.onnx"))


def _runs(session) -> bool:
    out = session.run(None, {"x": np.zeros((1, 4), dtype=np.float32)})[0]
    return bool((out == 1.0).all())


def test_corrupt_ort_cache_is_rebuilt_not_fatal(tiny_onnx, caplog):
    from pocketlm.inference.onnx_lm import cpu_session

    assert _runs(cpu_session(tiny_onnx))
    mine = [p for p in _cache_files(tiny_onnx) if p.stat().st_size]
    assert mine, "the first load writes the optimised graph"
    good = mine[-1].read_bytes()
    mine[-1].write_bytes(good[: len(good) // 2])  # a torn cache file
    with caplog.at_level(logging.WARNING, logger="pocketlm.inference.onnx_lm"):
        assert _runs(cpu_session(tiny_onnx))
    assert [r for r in caplog.records if "does not load" in r.getMessage() and "rebuilding" in r.getMessage()]
    assert mine[-1].read_bytes() == good  # rebuilt whole
    assert _runs(cpu_session(tiny_onnx))


def test_ort_cache_write_survives_a_full_disk(tiny_onnx):
    from pocketlm.inference.onnx_lm import cpu_session

    def write(version):
        for cached in _cache_files(tiny_onnx):
            cached.unlink()
        assert _runs(cpu_session(tiny_onnx))  # the session works whether or not the cache could be written

    def check(version):
        assert _runs(cpu_session(tiny_onnx))  # and a cache left behind loads

    assert inject_everywhere(write, check) >= 2


# ---------------------------------------------------------------- Trainer checkpoints (QA, classifier, RAG LoRA)

TINY_TRAINER = """
import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

def tiny_trainer(output_dir, max_steps=3):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=16)
    rows = [{"input_ids": [(i * 7 + j) % 40 for j in range(8)], "labels": i % 2} for i in range(8)]
    args = TrainingArguments(output_dir=str(output_dir), max_steps=max_steps, save_strategy="steps", save_steps=1,
                             per_device_train_batch_size=2, report_to="none", use_cpu=True, disable_tqdm=True,
                             logging_strategy="no", seed=0)
    return Trainer(model=BertForSequenceClassification(config), args=args, train_dataset=rows)
"""


@pytest.fixture(scope="module")
def tiny_trainer():
    namespace: dict = {}
    exec(TINY_TRAINER, namespace)
    return namespace["tiny_trainer"]


def test_newest_complete_trainer_checkpoint_is_resumed(tiny_trainer, tmp_path, capsys):
    from pocketlm.training.checkpoints import newest_complete_checkpoint

    tiny_trainer(tmp_path, max_steps=3).train()
    (tmp_path / "checkpoint-3" / "trainer_state.json").unlink()  # killed before the Trainer's last write
    weights = tmp_path / "checkpoint-2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # torn weights
    chosen = newest_complete_checkpoint(tmp_path)
    assert chosen == str(tmp_path / "checkpoint-1")
    assert not (tmp_path / "checkpoint-3").exists() and not (tmp_path / "checkpoint-2").exists()
    lines = [line for line in capsys.readouterr().out.splitlines() if "incomplete" in line]
    assert len(lines) == 1 and "checkpoint-3 (no trainer_state.json)" in lines[0], lines
    assert "checkpoint-2 (model.safetensors does not load" in lines[0] and "resuming from" in lines[0]
    tiny_trainer(tmp_path, max_steps=3).train(resume_from_checkpoint=chosen)  # the next run goes on
    assert json.loads((tmp_path / "checkpoint-3" / "trainer_state.json").read_text())["global_step"] == 3


def test_trainer_disk_full_mid_save_then_resume(tiny_trainer, tmp_path, monkeypatch):
    from transformers import Trainer

    from pocketlm.training.checkpoints import newest_complete_checkpoint

    real, saves = Trainer._save_optimizer_and_scheduler, []

    def full_disk_on_second_save(self, output_dir):
        saves.append(output_dir)
        if len(saves) == 2:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return real(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", full_disk_on_second_save)
    with pytest.raises(OSError):
        tiny_trainer(tmp_path, max_steps=3).train()
    monkeypatch.undo()
    assert (tmp_path / "checkpoint-2" / "model.safetensors").is_file()  # weights written, the rest not
    resume = newest_complete_checkpoint(tmp_path, log=lambda line: None)
    assert resume == str(tmp_path / "checkpoint-1")
    tiny_trainer(tmp_path, max_steps=3).train(resume_from_checkpoint=resume)
    assert newest_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-3")


@pytest.mark.slow
def test_trainer_killed_mid_save_resumes_from_the_previous_checkpoint(tiny_trainer, tmp_path):
    kill_in_second_save = TINY_TRAINER + textwrap.dedent(f"""
        import os, signal, sys
        real = Trainer._save_rng_state
        def save_rng_state(self, output_dir):
            if output_dir.endswith("checkpoint-2"):  # weights and optimizer written, trainer_state.json not yet
                os.kill(os.getpid(), signal.SIGKILL)
            return real(self, output_dir)
        Trainer._save_rng_state = save_rng_state
        tiny_trainer({str(tmp_path)!r}).train()
    """)
    result = subprocess.run([sys.executable, "-c", kill_in_second_save], env=ENV, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert (tmp_path / "checkpoint-2" / "model.safetensors").is_file()

    from transformers.trainer_utils import get_last_checkpoint

    from pocketlm.training.checkpoints import newest_complete_checkpoint

    assert get_last_checkpoint(str(tmp_path)).endswith("checkpoint-2")  # what transformers would resume from
    resume = newest_complete_checkpoint(tmp_path, log=lambda line: None)
    assert resume == str(tmp_path / "checkpoint-1")
    tiny_trainer(tmp_path).train(resume_from_checkpoint=resume)
    assert json.loads((tmp_path / "checkpoint-3" / "trainer_state.json").read_text())["global_step"] == 3


def test_a_named_incomplete_checkpoint_is_a_one_line_error(tmp_path):
    from pocketlm.training.checkpoints import ResumeError, check_resume_from

    (tmp_path / "checkpoint-5").mkdir()
    with pytest.raises(ResumeError, match=r"incomplete checkpoint \(no trainer_state.json; --resume_from_checkpoint\)"):
        check_resume_from(str(tmp_path / "checkpoint-5"))


def test_write_dir_keeps_the_old_folder_when_the_writer_fails(tmp_path):
    target = tmp_path / "artifact"
    write_dir(target, lambda folder: (folder / "v").write_text("1"))

    def broken(folder):
        (folder / "v").write_text("2")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        write_dir(target, broken)
    assert (target / "v").read_text() == "1" and no_leftovers(tmp_path) == []


def test_a_run_folder_refuses_a_run_on_other_base_weights(tmp_path):
    """The same base id retrained (other weights): the old run's checkpoints must not resume into the new one."""
    from safetensors.torch import save_file

    from pocketlm.training.checkpoints import ResumeError, claim_run_dir, weights_fingerprint

    base = tmp_path / "base"
    base.mkdir()
    save_file({"w": torch.zeros(4)}, base / "model.safetensors")
    identity = {"base model weights": weights_fingerprint(base), "settings": {"rank": 4}}
    claim_run_dir(tmp_path / "run", identity)
    claim_run_dir(tmp_path / "run", identity)  # the same run again: resumes
    save_file({"w": torch.ones(4)}, base / "model.safetensors")
    with pytest.raises(ResumeError, match=r"run holds a run whose base model weights differ from this one's"):
        claim_run_dir(tmp_path / "run", {**identity, "base model weights": weights_fingerprint(base)})
