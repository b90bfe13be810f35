"""pocketlm's SQuAD v1.1 EM/F1 against the reference functions (tests/squad_reference.py), on cases that trip up copies."""

from types import SimpleNamespace

import pytest

from pocketlm.inference.squad_metrics import exact_match_score, f1_score, normalize_answer, squad_scores

import squad_reference as reference

# (prediction, gold answers): articles inside words, repeated tokens, punctuation inside numbers and names,
# Unicode punctuation that string.punctuation does not hold, several golds, whitespace, empty predictions.
CASES = [
    ("the Denver Broncos", ["Denver Broncos"]),
    ("Denver Broncos won", ["Denver Broncos", "Broncos"]),
    ("THE   Broncos!!", ["broncos"]),
    ("theater district", ["the theater district", "a district"]),
    ("an an apple apple", ["apple"]),
    ("apple apple", ["apple apple pie", "pie"]),
    ("€5.5 million", ["5.5 million euros"]),
    ("Saint-Étienne", ["Saint Étienne"]),
    ("1,000", ["1000"]),
    ("", ["Paris"]),
    ("the", ["Paris"]),
    ("Paris, France", ["Paris", "France", "Paris France"]),
    ("“Quoted” answer", ['"Quoted" answer']),
    ("Denver\tBroncos\n", ["Denver Broncos"]),
    ("A.D. 1066", ["AD 1066"]),
    ("ÅNGSTRÖM units", ["ångström"]),
    ("in the year of the ox", ["year ox", "the ox"]),
    ("Beyoncé Giselle Knowles-Carter", ["Beyoncé Giselle Knowles-Carter", "Beyoncé"]),
]


@pytest.mark.parametrize("prediction, golds", CASES)
def test_each_answer_scores_as_the_reference_scores_it(prediction, golds):
    assert [normalize_answer(t) for t in (prediction, *golds)] == [reference.normalize_answer(t) for t in (prediction, *golds)]
    assert max(exact_match_score(prediction, g) for g in golds) == max(reference.compute_exact(g, prediction) for g in golds)
    assert max(f1_score(prediction, g) for g in golds) == pytest.approx(max(reference.compute_f1(g, prediction) for g in golds))


def test_the_corpus_scores_match_the_reference():
    examples = [SimpleNamespace(qas_id=f"q{i}", answers=[{"text": g} for g in golds]) for i, (_, golds) in enumerate(CASES)]
    predictions = {f"q{i}": prediction for i, (prediction, _) in enumerate(CASES)}
    expected = reference.make_eval_dict(*reference.get_raw_scores(examples, predictions))
    ours = squad_scores(predictions, [(e.qas_id, [a["text"] for a in e.answers]) for e in examples])
    assert ours["exact_match"] == pytest.approx(expected["exact"]) and ours["f1"] == pytest.approx(expected["f1"])
    assert ours["questions"] == expected["total"] == len(CASES)
    assert 0 < ours["exact_match"] < ours["f1"] < 100  # the cases mix hits, misses and partial overlaps
