"""Byte-level BPE tokenizer training, saved in transformers format (`tokenizer.json` + config).

Byte-level BPE (GPT-2's scheme) starts from the 256 byte values, so any text encodes with no unknown token,
then merges frequent pairs up to `vocab_size`. The same `tokenizer.json` is read by transformers
(`AutoTokenizer`) and by the `tokenizers` library alone, which the torch-free server uses.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS_TOKEN = "<|endoftext|>"
"""Separates documents in the token stream; doubles as BOS. Id 0."""
PAD_TOKEN = "<pad>"
"""Pads batches (id 1): distinct from EOS so padding never teaches the model to stop."""
MASK_TOKEN = "<mask>"
"""Replaces masked input tokens in the masking collator (id 2)."""
SPECIAL_TOKENS = [EOS_TOKEN, PAD_TOKEN, MASK_TOKEN]


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 8000, model_max_length: int = 512, min_frequency: int = 2):
    """Train a byte-level BPE tokenizer on `texts` and wrap it as a `PreTrainedTokenizerFast`."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        mask_token=MASK_TOKEN,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
        # A causal LM takes no segment ids: without this the tokenizer emits `token_type_ids` and
        # `model.generate(**tokenizer(text, return_tensors="pt"))` refuses them.
        model_input_names=["input_ids", "attention_mask"],
    )
