"""The copy curriculum: span-copy examples really quote their context, repeated sequences are labelled on the
copy only, the curriculum teaches a toy model to copy, and the LoRA script runs it (tiny-lm and a GPT-2)."""

from __future__ import annotations

import json
import random

import pytest
from fixture_models import run_training_script

from pocketlm.rag.copy_curriculum import (
    CopyCurriculumConfig,
    curriculum_features,
    make_cue,
    repeated_sequence_features,
    span_copy_pairs,
    train_copy_curriculum,
)
from pocketlm.rag.corpus import wikitext_distractors
from pocketlm.rag.generator import load_base
from pocketlm.rag.lora_finetune import copy_token_range


@pytest.fixture(scope="module")
def paragraphs():
    return wikitext_distractors(max_count=300)


def test_span_copy_answers_are_spans_of_a_fragment_shown_in_the_prompt(paragraphs, tiny_lm_repo):
    _, tokenizer = load_base(tiny_lm_repo)
    pairs = span_copy_pairs(paragraphs, 60, tokenizer, max_prompt_tokens=160, fragments=2, seed=3)
    assert len(pairs) == 60
    for pair in pairs:
        fragments_part, question_part = pair.prompt.split("\nQuestion: ")
        assert question_part == f"{pair.question}\nAnswer:"
        assert len(pair.fragments) == 2 and all(f"[{f.id}] {f.text}" in fragments_part for f in pair.fragments)
        assert any(pair.answer in f.text for f in pair.fragments)  # copied from the context, not made up
        assert pair.answer == pair.answer.strip() and pair.answer
        assert len(tokenizer(pair.prompt)["input_ids"]) <= 160
    kinds = {"continuation" if p.question.startswith("What comes after") else "cloze" for p in pairs}
    assert kinds == {"cloze", "continuation"}
    assert len({p.fragments for p in pairs}) > 50  # drawn across the corpus, not one paragraph
    assert span_copy_pairs(paragraphs, 5, tokenizer, 160, seed=3) == pairs[:5]  # seeded


def test_cues_ask_for_names_and_numbers_of_their_sentence():
    sentence = "The game was played on February 7, 2016, at Levi's Stadium in the San Francisco Bay Area at Santa Clara, California."
    cues = [make_cue(sentence, random.Random(seed)) for seed in range(60)]
    cues = [c for c in cues if c is not None]
    assert len(cues) >= 50 and all(c.answer in sentence for c in cues)
    answers = {c.answer for c in cues}
    assert {"2016", "Santa Clara"} & answers and "February 7" in {a[:10] for a in answers}
    cloze = [c for c in cues if c.kind == "cloze"]
    assert cloze and all(c.question.endswith("?") for c in cloze)
    assert any(c.answer == "2016" and "what year" in c.question for c in cloze) or "2016" not in answers
    assert make_cue("Too short to ask.", random.Random(0)) is None


def test_repeated_sequences_are_labelled_on_the_predictable_copy_only():
    features = repeated_sequence_features(512, 20, (5, 12), seed=4)
    low, high = copy_token_range(512)
    for feature in features:
        ids, labels = feature["input_ids"], feature["labels"]
        half = len(ids) // 2
        assert ids[:half] == ids[half:] and 5 <= half <= 12 and all(low <= t < high for t in ids)
        assert labels[: half + 1] == [-100] * (half + 1) and labels[half + 1 :] == ids[half + 1 :]
        assert len(feature["attention_mask"]) == len(ids)


def test_curriculum_mixes_both_kinds_in_the_configured_shares(paragraphs, tiny_lm_repo):
    _, tokenizer = load_base(tiny_lm_repo)
    config = CopyCurriculumConfig(steps=5, batch_size=8, repeat_fraction=0.25, max_prompt_tokens=160)
    features, pairs = curriculum_features(paragraphs, tokenizer, 512, config)
    assert len(features) == 40 and len(pairs) == 30
    prompt_like = [f for f in features if f["labels"].count(-100) != (len(f["input_ids"]) // 2 + 1)]
    assert len(prompt_like) == 30 and all(f["labels"][-1] == tokenizer.eos_token_id for f in prompt_like)


def _answer_loss(model, tokenizer, pairs) -> float:
    """Mean loss on the answer tokens of `pairs` (teacher forcing), as the curriculum's Trainer computes it."""
    import torch
    from transformers import DataCollatorForSeq2Seq

    from pocketlm.rag.lora_finetune import tokenize_pairs

    tokenizer.padding_side = "right"
    batch = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)(tokenize_pairs(pairs, tokenizer))
    with torch.inference_mode():
        return float(model.eval()(**batch).loss)


def test_curriculum_training_lowers_the_answer_loss_on_unseen_span_copies(paragraphs, tiny_lm_repo, tmp_path):
    """Full fine-tuning on the curriculum (real Trainer, all weights) generalises to span copies it never saw."""
    from pocketlm.hub import resolve

    model, tokenizer = load_base(tiny_lm_repo)
    unseen = span_copy_pairs(paragraphs[150:], 16, tokenizer, max_prompt_tokens=200, seed=99)
    before = _answer_loss(model, tokenizer, unseen)
    config = CopyCurriculumConfig(steps=24, batch_size=8, learning_rate=3e-3, max_prompt_tokens=200)
    trained, tokenizer, history = train_copy_curriculum(resolve(tiny_lm_repo), paragraphs[:150], config, tmp_path / "copy")
    assert all(p.requires_grad for p in trained.parameters())  # full fine-tuning, not an adapter
    assert [r["step"] for r in history if "loss" in r][-1] == 24 and (tmp_path / "copy" / "curves.png").is_file()
    assert _answer_loss(trained, tokenizer, unseen) < before - 0.3  # measured: 6.25 -> 5.57


def _run_script(argv, capsys):
    return run_training_script("run_lora_finetune.py", argv, capsys)


def test_lora_script_with_copy_curriculum_publishes_the_copy_base_the_lora_names(tiny_lm_repo, tmp_path, capsys):
    from pocketlm.hub import hub_dir
    from pocketlm.rag.generator import generate_answers, load_generator
    from pocketlm.rag.lora_finetune import read_pairs

    repo_id, copy_id = "pocketlm/test-copy-rag-lora", "pocketlm/test-tiny-lm-copy"
    printed = _run_script(["--preset", "smoke", "--copy_steps", "3", "--copy_batch_size", "4", "--output_dir", str(tmp_path / "run"),
                           "--repo_id", repo_id, "--copy_repo_id", copy_id], capsys)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    [run] = results["after"]
    assert 0 <= results["before"]["copy_accuracy"] <= 1 and 0 <= run["copy_base"]["copy_accuracy"] <= 1
    assert f"copy accuracy {run['copy_base']['copy_accuracy']:.3f} after the copy curriculum" in printed
    assert "base + copy curriculum + LoRA" in results["table"]
    assert (tmp_path / "run" / "seed-0" / "copy" / "metrics.json").is_file()  # the curriculum's loss curve

    copy_folder = hub_dir() / copy_id
    assert (copy_folder / "model.safetensors").is_file()
    assert json.loads((copy_folder / "metrics.json").read_text())["copy_accuracy"] == run["copy_base"]["copy_accuracy"]
    adapter_config = json.loads((hub_dir() / repo_id / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == copy_id
    model, tokenizer, description = load_generator(repo_id)
    assert description == f"{copy_id} + LoRA {repo_id}"
    held_out = read_pairs(tmp_path / "run" / "pairs.json")[1]
    from pocketlm.rag.lora_finetune import rouge_l

    answers = generate_answers(model, tokenizer, [p.prompt for p in held_out])
    assert rouge_l(answers, [p.answer for p in held_out]) == pytest.approx(run["rougeL"])  # published = measured


def test_lora_script_trains_a_gpt2_architecture_from_a_local_path(tiny_tokenizer, tmp_path, capsys):
    """`--base <path>` with a random-weight GPT-2 (the architecture of `--base gpt2`): curriculum, LoRA, scores."""
    from transformers import GPT2Config, GPT2LMHeadModel

    base = tmp_path / "gpt2-tiny"
    config = GPT2Config(vocab_size=len(tiny_tokenizer), n_positions=256, n_embd=64, n_layer=2, n_head=2,
                        bos_token_id=tiny_tokenizer.eos_token_id, eos_token_id=tiny_tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(base)
    tiny_tokenizer.save_pretrained(base)
    _run_script(["--preset", "smoke", "--base", str(base), "--copy_steps", "2", "--copy_batch_size", "4",
                 "--output_dir", str(tmp_path / "run"), "--repo_id", ""], capsys)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["base_model"] == str(base)
    [run] = results["after"]
    assert run["copy_base"] is not None and 0 <= run["f1"] <= 100
    adapter_config = json.loads((tmp_path / "run" / "seed-0" / "lora" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == run["lora_base"]
    assert "attn\\.c_attn" in adapter_config["target_modules"] and "attn\\.c_proj" in adapter_config["target_modules"]


def test_bad_copy_flags_are_refused_in_one_line(tiny_lm_repo):
    import subprocess
    import sys

    from pocketlm.settings import REPO_ROOT

    done = subprocess.run([sys.executable, str(REPO_ROOT / "training_scripts" / "run_lora_finetune.py"), "--copy_steps", "-1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--copy_steps" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_benchmark_compares_lora_alone_with_curriculum_and_lora_on_the_dev_loop(tiny_lm_repo, rag_files, tmp_path):
    """benchmarks/rag_copy_curriculum.py --preset smoke: both arms trained, copy accuracy and dev EM/F1 recorded."""
    import os
    import subprocess
    import sys

    from pocketlm.settings import REPO_ROOT

    passages, qa = rag_files
    record = tmp_path / "record"
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "rag_copy_curriculum.py"), "--preset", "smoke",
               "--dev_passages", str(passages), "--dev_qa", str(qa), "--query_adapter", "none",
               "--output_dir", str(tmp_path / "runs"), "--results_dir", str(record)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200, env={**os.environ, "TQDM_DISABLE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((record / "rag_copy_curriculum.json").read_text())
    rows = {r["arm"]: r for r in results["runs"]}
    assert set(rows) == {"LoRA alone", "copy curriculum + LoRA"} and all(r["dev_questions"] == 4 for r in rows.values())
    for row in rows.values():
        assert 0 <= row["copy_accuracy_before_lora"] <= 1 and 0 <= row["copy_accuracy"] <= 1 and 0 <= row["dev_f1"] <= 100
    # each arm's dev score is its own generator's: the loop evaluation ran on that seed's LoRA and base
    copy_dev = json.loads((tmp_path / "runs" / "copy-lora" / "seed-0" / "seed-0" / "dev" / "results.json").read_text())
    assert "copy-base" in copy_dev["readers"]["generative"]["model"] and copy_dev["readers"]["generative"]["f1"] == rows["copy curriculum + LoRA"]["dev_f1"]
    alone_dev = json.loads((tmp_path / "runs" / "lora" / "seed-0" / "seed-0" / "dev" / "results.json").read_text())
    assert "copy-base" not in alone_dev["readers"]["generative"]["model"]
    figures = dict(results["figures"])
    assert figures["copy accuracy, copy curriculum + LoRA (mean of seeds)"] == f"{rows['copy curriculum + LoRA']['copy_accuracy']:.3f}"
    assert (record / "rag_copy_curriculum.png").is_file() and "| copy curriculum + LoRA |" in (record / "rag_copy_curriculum.md").read_text()
