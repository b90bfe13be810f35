"""The generator LoRA (peft, rank 4 on the attention projections), RAG pairs, ROUGE-L, the evaluation script."""

from __future__ import annotations

import json

import pytest

from pocketlm.rag.corpus import squad_train_set
from pocketlm.rag.generator import (
    LoraTrainingConfig,
    RagPair,
    attention_target_modules,
    build_prompt,
    build_rag_pairs,
    finetune_lora,
    generate_answers,
    load_base,
    load_generator,
    rouge_l,
    save_lora,
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
