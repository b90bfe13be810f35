"""The reference SQuAD EM/F1: the functions of transformers' `data/metrics/squad_metrics.py` (4.x, Apache-2.0),
themselves the official SQuAD evaluation script's, kept here verbatim in substance because transformers 5
removed the module. `tests/test_squad_metrics.py` holds pocketlm's own metric to them."""

from __future__ import annotations

import collections
import re
import string


def normalize_answer(s):
    """Lower text and remove punctuation, articles and extra whitespace."""

    def remove_articles(text):
        return re.sub(re.compile(r"\b(a|an|the)\b", re.UNICODE), " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def get_tokens(s):
    return normalize_answer(s).split() if s else []


def compute_exact(a_gold, a_pred):
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1(a_gold, a_pred):
    gold_toks, pred_toks = get_tokens(a_gold), get_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        # If either is no-answer, then F1 is 1 if they agree, 0 otherwise
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def get_raw_scores(examples, preds):
    """Exact and F1 per question id: the best over the gold answers (an empty gold list counts as one "")."""
    exact_scores, f1_scores = {}, {}
    for example in examples:
        gold_answers = [answer["text"] for answer in example.answers if normalize_answer(answer["text"])] or [""]
        if example.qas_id not in preds:
            continue
        prediction = preds[example.qas_id]
        exact_scores[example.qas_id] = max(compute_exact(a, prediction) for a in gold_answers)
        f1_scores[example.qas_id] = max(compute_f1(a, prediction) for a in gold_answers)
    return exact_scores, f1_scores


def make_eval_dict(exact_scores, f1_scores):
    total = len(exact_scores)
    return {"exact": 100.0 * sum(exact_scores.values()) / total, "f1": 100.0 * sum(f1_scores.values()) / total, "total": total}
