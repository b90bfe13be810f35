"""Span selection, SQuAD features and the official EM/F1 — the numpy/tokenizers-only half of the QA path."""

import subprocess
import sys

import numpy as np
import pytest

from pocketlm.data import load_squad
from pocketlm.data.qa import answer_token_positions, encode_qa, qa_tokenizer, training_features
from pocketlm.hub import resolve
from pocketlm.inference.qa_postprocess import NO_ANSWER, best_span, context_offsets
from pocketlm.inference.squad_metrics import f1_score, normalize_answer, squad_scores

CONTEXT = "Paris is the capital of France. Berlin is the capital of Germany."
#          0     6  9   13      21 24     31     38 41  45      53 56
WORDS = [(0, 5), (6, 8), (9, 12), (13, 20), (21, 23), (24, 30), (30, 31), (32, 38), (39, 41), (42, 45), (46, 53), (54, 56), (57, 64), (64, 65)]


def window(token_offsets, question_tokens=3):
    """Offsets of one feature: [CLS] + question tokens + [SEP] + context tokens + [SEP]."""
    return [None] * (question_tokens + 2) + list(token_offsets) + [None]


def logits_for(offsets, start, end, high=8.0):
    """Logits peaking at token indices `start`, `end` (indices into the full feature)."""
    starts, ends = np.zeros(len(offsets)), np.zeros(len(offsets))
    starts[start], ends[end] = high, high
    return starts, ends


def test_best_span_returns_text_and_character_offsets():
    offsets = window(WORDS)
    starts, ends = logits_for(offsets, 5 + 7, 5 + 7)  # "Berlin"
    answer = best_span([starts], [ends], [offsets], CONTEXT)
    assert (answer.text, answer.start, answer.end) == ("Berlin", 32, 38)
    assert CONTEXT[answer.start : answer.end] == answer.text
    assert 0.5 < answer.score <= 1.0


def test_best_span_ignores_question_tokens_padding_and_backward_or_long_spans():
    offsets = window(WORDS)
    starts, ends = logits_for(offsets, 2, 2, high=50.0)  # a question token: never an answer
    starts, ends = np.append(starts, 99.0), np.append(ends, 99.0)  # padding beyond the offsets
    starts[5 + 3] += 5.0  # "capital"
    ends[5 + 1] += 4.0  # an end before the start is not a span...
    ends[5 + 5] += 3.0  # ..."capital of France" is
    assert best_span([starts], [ends], [offsets], CONTEXT).text == "capital of France"
    assert best_span([starts], [ends], [offsets], CONTEXT, max_answer_tokens=2).text == "capital"


def test_best_span_picks_the_best_window_of_a_long_context():
    first, second = window(WORDS[:8]), window(WORDS[5:])  # two overlapping windows (document stride)
    starts_1, ends_1 = logits_for(first, 5 + 0, 5 + 0, high=3.0)  # "Paris", weaker
    starts_2, ends_2 = logits_for(second, 5 + 2, 5 + 2, high=6.0)  # "Berlin", in the second window
    answer = best_span([starts_1, starts_2], [ends_1, ends_2], [first, second], CONTEXT)
    assert (answer.text, answer.start) == ("Berlin", 32)


def test_best_span_equals_an_exhaustive_search_over_every_pair():
    """The banded search finds the same span as trying every (start, end) pair, ties included (rounded logits),
    with question tokens and gaps among the context tokens."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 80))
        offsets = [None if rng.random() < 0.15 else (i, i + 1) for i in range(n)]
        starts, ends = rng.normal(size=n).round(1), rng.normal(size=n).round(1)
        max_tokens = int(rng.integers(1, 40))
        best, span = -np.inf, None
        for i in range(n):
            for j in range(i, min(n, i + max_tokens)):
                if offsets[i] is not None and offsets[j] is not None and starts[i] + ends[j] > best:
                    best, span = starts[i] + ends[j], (offsets[i][0], offsets[j][1])
        answer = best_span([starts], [ends], [offsets], "x" * n, max_answer_tokens=max_tokens)
        assert (answer.start, answer.end) == (span if span else (0, 0))


def test_best_span_without_context_tokens_is_no_answer():
    assert best_span([np.zeros(4)], [np.zeros(4)], [[None] * 4], CONTEXT) == NO_ANSWER


def test_context_offsets_keep_only_the_second_sequence():
    assert context_offsets([(0, 0), (0, 4), (0, 0), (0, 5), (0, 0)], [None, 0, None, 1, None]) == [None, None, None, (0, 5), None]


def test_postprocess_imports_neither_torch_nor_transformers():
    code = (
        "import sys, pocketlm.inference.qa_engine, pocketlm.inference.qa_postprocess, pocketlm.inference.squad_metrics;"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------- official SQuAD v1.1 metrics


def test_normalisation_and_f1_follow_the_official_script():
    assert normalize_answer("The  Eiffel-Tower, in Paris!") == "eiffeltower in paris"
    assert normalize_answer("an apple and a pear") == "apple and pear"
    assert f1_score("the Denver Broncos", "Denver Broncos") == 1.0
    assert f1_score("Denver Broncos won", "Denver Broncos") == pytest.approx(0.8)  # P 2/3, R 1
    assert f1_score("Carolina", "Denver Broncos") == 0.0
    scores = squad_scores({"q1": "Denver", "q2": "1990s"}, [("q1", ["Denver Broncos", "Denver"]), ("q2", ["the 1980s"]), ("q3", ["x"])])
    assert scores == {"exact_match": pytest.approx(100 / 3), "f1": pytest.approx(100 / 3), "questions": 3}


# ---------------------------------------------------------------- features


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve("minilm"))


@pytest.fixture(scope="module")
def squad_validation():
    return load_squad("validation").select(range(40)).to_list()


def test_features_equal_a_transformers_fast_tokenizer_with_overflow(minilm_tokenizer, squad_validation):
    records = squad_validation[:6]
    questions, contexts = [r["question"] for r in records], [r["context"] for r in records]
    features = encode_qa(qa_tokenizer(minilm_tokenizer, max_length=96, stride=32), questions, contexts)
    reference = minilm_tokenizer(
        questions, contexts, truncation="only_second", max_length=96, stride=32,
        return_overflowing_tokens=True, return_offsets_mapping=True,
    )
    assert len(features) > len(records)  # long contexts made several windows
    assert features.input_ids == reference["input_ids"]
    assert features.token_type_ids == reference["token_type_ids"]
    assert features.example_index == reference["overflow_to_sample_mapping"]
    for f, offsets in enumerate(features.offsets):
        expected = context_offsets(reference["offset_mapping"][f], reference.sequence_ids(f))
        assert offsets == expected


def test_training_labels_point_at_the_answer_or_at_cls(minilm_tokenizer, squad_validation):
    tokenizer = qa_tokenizer(minilm_tokenizer, max_length=96, stride=32)
    columns = training_features(squad_validation, tokenizer)
    features = encode_qa(tokenizer, [r["question"] for r in squad_validation], [r["context"] for r in squad_validation])
    inside = outside = 0
    for f, (start, end) in enumerate(zip(columns["start_positions"], columns["end_positions"])):
        record = squad_validation[features.example_index[f]]
        gold = record["answers"]["text"][0]
        if start == end == 0:
            outside += 1
            continue
        inside += 1
        offsets = features.offsets[f]
        span = record["context"][offsets[start][0] : offsets[end][1]]
        assert gold in span and len(span) <= len(gold) + 10  # whole tokens: "gold" may come as "golden"
    assert inside >= len(squad_validation) and outside > 0
    assert answer_token_positions([None, (0, 5), (6, 9)], 20, "far") == (0, 0)
