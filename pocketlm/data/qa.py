"""SQuAD preprocessing: (question, context) pairs → model features, with `tokenizers` and numpy alone.

A context longer than `max_length` tokens is cut into overlapping windows (`stride` tokens shared between
neighbours, the "document stride"), one *feature* each, so an answer near a cut is whole in some window.
Training, evaluation (PyTorch and ONNX) and the torch-free server all encode through `encode_qa`, so the
features a model is evaluated on are exactly the ones the server feeds it. It gives the same ids and
offsets as a transformers fast tokenizer called with `truncation="only_second", return_overflowing_tokens=True`
(tested), without importing transformers.

Features are left unpadded: batches are padded to their longest feature (`pad_batch`, or transformers'
`DataCollatorWithPadding` in training) — "dynamic padding", which on SQuAD (most contexts < 200 tokens)
costs a fraction of padding everything to `max_length`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pocketlm.errors import ConfigError
from pocketlm.inference.qa_postprocess import Offset, context_offsets

MAX_LENGTH = 384
STRIDE = 128


@dataclass
class QAFeatures:
    """Token windows of a list of examples; `example_index[f]` is the example that feature `f` came from."""

    input_ids: list[list[int]] = field(default_factory=list)
    token_type_ids: list[list[int]] = field(default_factory=list)
    attention_mask: list[list[int]] = field(default_factory=list)
    offsets: list[list[Offset]] = field(default_factory=list)
    """Context offsets per token; None for question, special and padding tokens."""
    example_index: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)


def qa_tokenizer(tokenizer, max_length: int = MAX_LENGTH, stride: int = STRIDE):
    """A private copy of `tokenizer` (a `tokenizers.Tokenizer` or a transformers fast tokenizer) set up for QA windows.

    The copy matters: tokenizer.json files often carry their own padding/truncation settings (the MiniLM one
    pads to 128), and the caller's tokenizer must not change under it.
    """
    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if stride >= max_length // 2:
        raise ConfigError(f"--doc_stride ({stride}) must be less than half of --max_length ({max_length})")
    copy = Tokenizer.from_str(backend.to_str())
    copy.no_padding()
    copy.enable_truncation(max_length, stride=stride, strategy="only_second")
    return copy


def encode_qa(tokenizer, questions: Sequence[str], contexts: Sequence[str]) -> QAFeatures:
    """Encode (question, context) pairs with a tokenizer from `qa_tokenizer`: every window of every pair.

    Leading whitespace of a question is dropped (as transformers' `run_qa.py` does: it only wastes tokens).
    """
    if len(questions) != len(contexts):
        raise ValueError(f"{len(questions)} questions but {len(contexts)} contexts")
    try:
        encodings = tokenizer.encode_batch(list(zip((q.lstrip() for q in questions), contexts)))
    except Exception as err:  # tokenizers raises a bare Exception when the question leaves no room for the context
        raise ConfigError(f"a question is too long to leave room for its context: {err}") from err
    features = QAFeatures()
    for example, encoding in enumerate(encodings):
        for window in (encoding, *encoding.overflowing):
            features.input_ids.append(window.ids)
            features.token_type_ids.append(window.type_ids)
            features.attention_mask.append(window.attention_mask)
            features.offsets.append(context_offsets(window.offsets, window.sequence_ids))
            features.example_index.append(example)
    return features


def answer_token_positions(offsets: Sequence[Offset], answer_start: int, answer_text: str) -> tuple[int, int]:
    """Token indices (start, end) of an answer given in characters; (0, 0) — the [CLS] token — when the
    window does not hold the whole answer (the `run_qa.py` convention for SQuAD training)."""
    context_positions = [i for i, offset in enumerate(offsets) if offset is not None]
    if not context_positions:
        return 0, 0
    answer_end = answer_start + len(answer_text)
    first, last = context_positions[0], context_positions[-1]
    if offsets[first][0] > answer_start or offsets[last][1] < answer_end:
        return 0, 0
    start = first
    while start <= last and offsets[start][0] <= answer_start:
        start += 1
    end = last
    while end >= first and offsets[end][1] >= answer_end:
        end -= 1
    return start - 1, end + 1


def training_features(records: Sequence[dict], tokenizer) -> dict[str, list]:
    """Columns for a training `datasets.Dataset`: ids, masks and the first answer's start/end token positions."""
    features = encode_qa(tokenizer, [r["question"] for r in records], [r["context"] for r in records])
    starts, ends = [], []
    for offsets, example in zip(features.offsets, features.example_index):
        answers = records[example]["answers"]
        if answers["text"]:
            start, end = answer_token_positions(offsets, answers["answer_start"][0], answers["text"][0])
        else:
            start = end = 0
        starts.append(start)
        ends.append(end)
    return {
        "input_ids": features.input_ids,
        "token_type_ids": features.token_type_ids,
        "attention_mask": features.attention_mask,
        "start_positions": starts,
        "end_positions": ends,
    }


def pad_batch(features: QAFeatures, indices: Sequence[int], pad_token_id: int, input_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Stack the features `indices` into int64 arrays padded to the longest of them, for the model inputs named."""
    width = max(len(features.input_ids[i]) for i in indices)
    pad_values = {"input_ids": pad_token_id, "token_type_ids": 0, "attention_mask": 0}
    batch = {}
    for name in input_names:
        rows = getattr(features, name)
        array = np.full((len(indices), width), pad_values[name], dtype=np.int64)
        for row, i in enumerate(indices):
            array[row, : len(rows[i])] = rows[i]
        batch[name] = array
    return batch


def pad_token_id(tokenizer) -> int:
    """The id of the padding token of a `tokenizers.Tokenizer` (BERT's `[PAD]`), 0 where it has none."""
    for token in ("[PAD]", "<pad>", "<PAD>"):
        if (token_id := tokenizer.token_to_id(token)) is not None:
            return token_id
    return 0
