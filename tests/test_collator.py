"""CustomDataCollator: masking rates, static vs dynamic masks, special tokens, and use inside a Trainer."""

import pytest
import torch

from pocketlm.data.collator import CustomDataCollator

MASK, PAD, EOS = 2, 1, 0


def _features(n_chunks, length=512, eos_every=50, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 8000, (n_chunks, length), generator=generator)
    ids[:, ::eos_every] = EOS  # document boundaries inside chunks
    return [{"id": i, "input_ids": row.tolist()} for i, row in enumerate(ids)]


def _collator(mode, **kwargs):
    return CustomDataCollator(mode=mode, mask_token_id=MASK, pad_token_id=PAD, special_token_ids=[EOS], **kwargs)


def test_dynamic_masks_15_percent_of_ordinary_tokens_and_keeps_labels():
    features = _features(64)
    batch = _collator("dynamic")(features)
    original = torch.tensor([f["input_ids"] for f in features])
    masked = batch["input_ids"] == MASK
    ordinary = original != EOS
    rate = masked[ordinary].float().mean().item()
    assert abs(rate - 0.15) < 0.01  # 31k tokens: the binomial standard deviation is 0.002
    assert torch.equal(batch["labels"], original)  # the next-token targets stay the clean text
    assert torch.equal(batch["input_ids"][~masked], original[~masked])


def test_special_tokens_and_padding_are_never_masked():
    features = _features(40, length=64, eos_every=2)  # half the tokens are EOS
    features[0]["input_ids"] = features[0]["input_ids"][:20]  # a short chunk gets padded
    collator = _collator("dynamic", mlm_probability=1.0)
    batch = collator(features)
    assert (batch["input_ids"][1:, ::2] == EOS).all() and (batch["input_ids"][0, :20:2] == EOS).all()
    assert (batch["input_ids"][1:, 1::2] == MASK).all()  # every ordinary token masked at p=1
    assert (batch["input_ids"][0, 20:] == PAD).all() and (batch["labels"][0, 20:] == -100).all()
    assert batch["attention_mask"][0].sum() == 20
    static = _collator("static", mlm_probability=1.0, static_chunk_fraction=1.0)(features)
    assert (static["input_ids"][1:, ::2] == EOS).all() and (static["input_ids"][0, 20:] == PAD).all()
    assert (static["input_ids"][1:, 1::2] == MASK).all()


def test_dynamic_masks_change_between_epochs_static_ones_do_not():
    features = _features(32, length=128)
    dynamic, static = _collator("dynamic"), _collator("static", static_chunk_fraction=0.5)
    epoch1, epoch2 = dynamic(features)["input_ids"], dynamic(features)["input_ids"]
    assert not torch.equal(epoch1 == MASK, epoch2 == MASK)
    torch.manual_seed(1)
    first = static(features)["input_ids"]
    torch.manual_seed(2)
    again = static(list(reversed(features)))["input_ids"].flip(0)  # another order, another RNG state
    assert torch.equal(first, again) and (first == MASK).any()
    assert torch.equal(_collator("static", static_chunk_fraction=0.5, seed=0)(features)["input_ids"], first)
    assert not torch.equal(_collator("static", static_chunk_fraction=0.5, seed=1)(features)["input_ids"], first)


def test_static_masks_10_percent_of_chunks_at_15_percent_of_their_tokens():
    features = _features(2000, length=128)
    batch = _collator("static")(features)
    masked = batch["input_ids"] == MASK
    chunk_masked = masked.any(dim=1)
    assert abs(chunk_masked.float().mean().item() - 0.10) < 0.025  # 2000 chunks: sd 0.0067
    ordinary = torch.tensor([f["input_ids"] for f in features]) != EOS
    within = masked[chunk_masked][ordinary[chunk_masked]].float().mean().item()
    assert abs(within - 0.15) < 0.015


def test_no_masking_mode_and_bad_arguments():
    features = _features(4, length=32)
    batch = _collator("none")(features)
    assert torch.equal(batch["input_ids"], batch["labels"])
    with pytest.raises(ValueError, match="masking mode"):
        _collator("sometimes")
    with pytest.raises(KeyError, match="remove_unused_columns=False"):
        _collator("static")([{"input_ids": [5, 6, 7]}])


def test_collator_drives_a_transformers_trainer(tmp_path, tiny_lm_repo, tiny_tokenizer):
    """Usable wherever transformers takes a data collator: a real Trainer on the Llama checkpoint."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from pocketlm.hub import resolve

    model = AutoModelForCausalLM.from_pretrained(resolve(tiny_lm_repo))
    chunks = Dataset.from_list(_features(16, length=64, eos_every=16, seed=3)).map(
        lambda row: {"input_ids": [i % len(tiny_tokenizer) for i in row["input_ids"]]}
    )
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-3,
        remove_unused_columns=False, report_to=[], save_strategy="no", use_cpu=True, logging_steps=1,
    )
    collator = CustomDataCollator(tiny_tokenizer, mode="static", static_chunk_fraction=0.5)
    result = Trainer(model=model, args=args, train_dataset=chunks, data_collator=collator).train()
    assert result.global_step == 3 and torch.isfinite(torch.tensor(result.training_loss))
