"""The generator LoRA (peft, rank 4 on the attention projections), RAG pairs, ROUGE-L, the evaluation script."""

from __future__ import annotations

import json

import pytest
from fixture_models import run_training_script

from pocketlm.rag.corpus import squad_train_set
from pocketlm.rag.generator import build_prompt, generate_answers, load_base, load_generator
from pocketlm.rag.lora_finetune import (
    LoraTrainingConfig,
    RagPair,
    attention_target_modules,
    build_rag_pairs,
    copy_accuracy,
    finetune_lora,
    read_pairs,
    rouge_l,
    save_lora,
    write_pairs,
)
from pocketlm.rag.prompt import Fragment


@pytest.fixture(scope="module")
def squad_pairs(tiny_lm_repo):
    """Real SQuAD-train questions with their gold paragraph, cropped for the test LM (256 positions, vocab 512)."""
    _, tokenizer = load_base(tiny_lm_repo)
    data = squad_train_set()
    rows = list(range(0, 480, 20))
    pairs, _ = build_rag_pairs(data, rows, [[data.positives[r]] for r in rows], tokenizer, max_prompt_tokens=220)
    return pairs[:12]


def test_lora_targets_every_attention_projection_and_nothing_else(tiny_lm_repo):
    import re

    model, _ = load_base(tiny_lm_repo)
    pattern = re.compile(attention_target_modules(model))
    matched = [name for name, _ in model.named_modules() if pattern.match(name)]
    assert {name.rsplit(".", 1)[1] for name in matched} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert len(matched) == 4 * model.config.num_hidden_layers


def test_pairs_fit_the_budget_and_keep_their_answer(squad_pairs, tiny_lm_repo):
    _, tokenizer = load_base(tiny_lm_repo)
    assert len(squad_pairs) >= 8
    for pair in squad_pairs:
        assert len(tokenizer(pair.prompt)["input_ids"]) <= 220
        assert any(pair.answer in f.text for f in pair.fragments)
        assert all(f"[{f.id}] " in pair.prompt for f in pair.fragments)


def test_build_prompt_drops_old_history_before_starving_the_fragments(tiny_lm_repo):
    _, tokenizer = load_base(tiny_lm_repo)
    history = [(f"question number {i} " * 8, "an answer " * 8) for i in range(3)]
    fitted = build_prompt(tokenizer, "Who won?", [Fragment("f1", "", "The Broncos won the game. " * 30)], history, max_prompt_tokens=160)
    assert len(tokenizer(fitted.text)["input_ids"]) <= 160
    assert len(fitted.history) < 3 and "[f1] " in fitted.text


def test_rouge_l():
    assert rouge_l(["Denver Broncos"], ["Denver Broncos"]) == pytest.approx(1.0)
    assert rouge_l(["Carolina"], ["Denver Broncos"]) == 0.0
    assert 0 < rouge_l(["the Denver team"], ["Denver Broncos"]) < 1


@pytest.mark.slow
def test_lora_finetune_learns_saves_and_loads(squad_pairs, tiny_lm_repo, tmp_path):
    from pocketlm.hub import resolve

    config = LoraTrainingConfig(num_train_epochs=6, learning_rate=5e-3, per_device_train_batch_size=4, logging_steps=1)
    model, tokenizer, history = finetune_lora(resolve(tiny_lm_repo), squad_pairs, squad_pairs[:4], config, tmp_path / "run")
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    losses = [r["loss"] for r in history if "loss" in r]
    assert losses[-1] < losses[0]  # it learns the answers (loss on answer tokens only)
    assert (tmp_path / "run" / "curves.png").is_file()

    save_lora(model, tokenizer, tmp_path / "lora", tiny_lm_repo)
    config_json = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config_json["r"] == 4 and config_json["base_model_name_or_path"] == tiny_lm_repo
    assert (tmp_path / "lora" / "adapter_model.safetensors").is_file()
    merged, merged_tokenizer, description = load_generator(str(tmp_path / "lora"))
    assert "LoRA" in description and not any("lora_" in name for name, _ in merged.named_parameters())
    answers = generate_answers(merged, merged_tokenizer, [p.prompt for p in squad_pairs[:3]], max_new_tokens=4)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)


def test_pairs_whose_answer_is_cropped_away_are_dropped(tiny_lm_repo):
    _, tokenizer = load_base(tiny_lm_repo)
    data = squad_train_set()
    rows = list(range(0, 100, 10))
    pairs, dropped = build_rag_pairs(data, rows, [[data.positives[r]] for r in rows], tokenizer, max_prompt_tokens=60)
    assert dropped > 0 and len(pairs) + dropped == len(rows)
    assert all(isinstance(p, RagPair) for p in pairs)


class _Copier:
    """A stand-in LM with a perfect induction head: at position t it predicts the token after the earlier
    occurrence of token t (the behaviour `copy_accuracy` looks for), or an arbitrary token when there is none."""

    device = "cpu"

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __call__(self, input_ids):
        import types

        import torch

        batch, length = input_ids.shape
        logits = torch.zeros(batch, length, self.vocab_size)
        for b in range(batch):
            for t in range(length):
                earlier = (input_ids[b, :t] == input_ids[b, t]).nonzero()
                target = input_ids[b, earlier[-1, 0] + 1] if len(earlier) else 0
                logits[b, t, target] = 1.0
        return types.SimpleNamespace(logits=logits)


def test_copy_accuracy_tells_a_model_that_copies_from_one_that_cannot(tiny_lm_repo):
    model, _ = load_base(tiny_lm_repo)
    assert copy_accuracy(_Copier(512), 512, length=20, sequences=4) > 0.95
    assert copy_accuracy(model, model.config.vocab_size, length=20, sequences=4) < 0.2  # random weights do not copy


def test_pairs_file_round_trips(squad_pairs, tmp_path):
    write_pairs(tmp_path / "pairs.json", squad_pairs[:5], squad_pairs[5:8])
    train, held_out = read_pairs(tmp_path / "pairs.json")
    assert train == squad_pairs[:5] and held_out == squad_pairs[5:8]


@pytest.mark.slow
def test_lora_sweep_reports_gain_and_seed_spread_per_config(squad_pairs, tiny_lm_repo, tmp_path):
    import os
    import subprocess
    import sys

    from pocketlm.settings import REPO_ROOT

    write_pairs(tmp_path / "pairs.json", squad_pairs[:8], squad_pairs[8:12])
    out = tmp_path / "sweep"
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "rag_lora_sweep.py"), "--pairs", str(tmp_path / "pairs.json"),
               "--learning_rates", "5e-3", "--epochs", "1", "--seeds", "0,1", "--output_dir", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "TQDM_DISABLE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "rag_lora_sweep.json").read_text())
    [config] = results["configs"]
    scores = [r["rougeL"] for r in results["runs"]]
    assert sorted(r["seed"] for r in results["runs"]) == [0, 1] and config["seeds"] == 2
    assert config["rougeL_gain"] == pytest.approx(sum(scores) / 2 - results["rougeL_before"])
    assert config["rougeL_seed_spread"] == pytest.approx(max(scores) - min(scores))
    assert config["gain_exceeds_spread"] == (config["rougeL_gain"] > config["rougeL_seed_spread"])
    assert (out / "rag_lora_sweep.png").is_file() and "gain > spread" in (out / "rag_lora_sweep.md").read_text()

    bad = subprocess.run([*command[:2], "--pairs", str(tmp_path / "missing.json")], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--pairs" in bad.stderr and "Traceback" not in bad.stderr


def test_run_lora_finetune_script_measures_before_and_after_and_publishes_the_lora(tiny_lm_repo, tmp_path, capsys):
    """training_scripts/run_lora_finetune.py --preset smoke: pairs → ROUGE-L before → LoRA → after → published."""
    from pocketlm.hub import hub_dir

    repo_id = "pocketlm/test-rag-lora"
    printed = run_training_script("run_lora_finetune.py", ["--preset", "smoke", "--output_dir", str(tmp_path / "run"),
                                                            "--repo_id", repo_id], capsys)

    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["pairs"] == {"train": 4, "held_out": 4} and [r["seed"] for r in results["after"]] == [0]
    before, after = results["rougeL_before"], results["after"][0]["rougeL"]
    assert 0 <= before <= 1 and 0 <= after <= 1 and results["rougeL_gain"] == pytest.approx(after - before)
    assert f"ROUGE-L {before:.4f} -> {after:.4f}" in printed
    examples = results["after"][0]["examples"]
    assert any(e["before"] != e["after"] for e in examples)  # "after" comes from another model than "before"
    assert len(read_pairs(tmp_path / "run" / "pairs.json")[1]) == 4  # the held-out pairs it was judged on

    folder = hub_dir() / repo_id
    adapter_config = json.loads((folder / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4 and adapter_config["base_model_name_or_path"] == tiny_lm_repo
    card = (folder / "README.md").read_text()
    assert f"{before:.4f} before, {after:.4f} after" in card and "library_name: peft" in card
    assert json.loads((folder / "lora_results.json").read_text())["rougeL_before"] == before
    from safetensors.torch import load_file

    lora_b = [v for k, v in load_file(folder / "adapter_model.safetensors").items() if "lora_B" in k]
    assert lora_b and any(bool(v.abs().sum() > 0) for v in lora_b)  # trained: peft starts every B at zero
    model, tokenizer, description = load_generator(repo_id)  # the published LoRA loads onto its base
    assert description == f"{tiny_lm_repo} + LoRA {repo_id}"
    held_out = read_pairs(tmp_path / "run" / "pairs.json")[1]
    answers = generate_answers(model, tokenizer, [p.prompt for p in held_out])
    assert rouge_l(answers, [p.answer for p in held_out]) == pytest.approx(after)  # the published LoRA scores "after"

    # The same folder with other settings (or a retrained base) would resume the old checkpoints: refused, kept.
    import runpy
    import sys

    from pocketlm.settings import REPO_ROOT

    capsys.readouterr()
    argv, sys.argv = sys.argv, ["run_lora_finetune.py", "--preset", "smoke", "--output_dir", str(tmp_path / "run"),
                                "--repo_id", repo_id, "--learning_rate", "0.01"]
    try:
        with pytest.raises(SystemExit) as exit_:
            runpy.run_path(str(REPO_ROOT / "training_scripts" / "run_lora_finetune.py"), run_name="__main__")
    finally:
        sys.argv = argv
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'run'} holds a run whose settings differ from this one's: its checkpoints cannot continue "
        "this run; delete the folder or pass another --output_dir")
    assert json.loads((tmp_path / "run" / "results.json").read_text()) == results
