"""Grounded answers (the reader's span, its source and score, abstention) and follow-up questions: the real
retriever over a published FAISS index, a real (random-weight) reader, the tiny LM generator."""

from __future__ import annotations

import pytest

from pocketlm.rag.answer import ReaderSpan, abstention_report, choose_threshold, read_fragments, select_span
from pocketlm.rag.prompt import Fragment
from pocketlm.rag.chain import NOT_FOUND, RagAgent
from pocketlm.rag.conversation import contextual_query, merge_retrievals, needs_context, salient_terms
from pocketlm.rag.followups import follow_up_set, lean_on
from pocketlm.rag.retriever import RagRetriever

FIRST = "Which NFL team won Super Bowl 50?"
FOLLOW_UP = "Where was the game played?"


@pytest.fixture(scope="module")
def agent(rag_index_repo, rag_encoder, tiny_lm_repo, rag_reader_repo) -> RagAgent:
    from pocketlm.inference.qa_torch import TorchQuestionAnswerer
    from pocketlm.rag.generator import load_generator

    retriever = RagRetriever.from_pretrained(rag_index_repo, encoder=rag_encoder)
    model, tokenizer, description = load_generator(lora=None, base=tiny_lm_repo)
    reader = TorchQuestionAnswerer.from_pretrained(rag_reader_repo)
    return RagAgent(retriever, model, tokenizer, reader, k=3, abstain_below=0.0, description=description)


def test_the_answer_is_the_readers_best_span_with_its_source_and_score(agent):
    result = agent.answer(FIRST)
    assert len(result.fragments) == 3 and not result.abstained
    candidates = read_fragments(agent.reader, FIRST, result.fragments)
    assert [c.fragment for c in candidates] == result.fragments and result.candidates == candidates
    assert result.span == select_span(candidates, agent.retrieval_weight) and result.score == result.span.score
    source = result.source
    assert source in result.fragments and result.cited[0] == source.id
    assert source.text[result.span.start : result.span.end] == result.answer  # a span of the fragment, verbatim
    assert f"[source: {source.id} ({source.title}), score {result.score:.3f}]" in result.to_text()
    record = result.to_dict()
    assert record["source"] == {"id": source.id, "title": source.title} and record["abstained"] is False
    assert [f["id"] for f in record["fragments"]] == [f.id for f in result.fragments]
    assert record["generated"] == result.generated and record["query"] == FIRST


def test_below_the_threshold_the_agent_says_not_found_and_shows_the_fragments(agent):
    score = agent.answer(FIRST).score
    try:
        agent.abstain_below = score  # a span scoring the threshold itself is answered
        assert agent.answer(FIRST).answer
        agent.abstain_below = score * 1.001
        agent.reset()
        result = agent.ask(FIRST)
        assert result.abstained and result.answer == "" and result.source is None and result.cited == []
        text = result.to_text()
        assert text.startswith("Not found in the fragments") and f'best guess "{result.span.text}"' in text
        assert f"[retrieved: {', '.join(f.id for f in result.fragments)}]" in text
        assert agent.history == [(FIRST, NOT_FOUND)]  # the memory holds no invented answer
        assert result.to_dict()["abstained"] is True and result.to_dict()["source"] is None
    finally:
        agent.abstain_below = 0.0
        agent.reset()


def test_a_follow_up_is_searched_with_the_conversation(agent):
    agent.reset()
    agent.ask(FIRST)
    follow_up = agent.ask(FOLLOW_UP)
    assert follow_up.query.startswith(FOLLOW_UP) and "Super Bowl 50" in follow_up.query
    assert [f.id for f in follow_up.fragments] == [f.id for f in agent.retrieve(FOLLOW_UP, agent.history[:1])[1]]
    assert all(f.id.startswith("val-00-") for f in follow_up.fragments)  # the Super Bowl article
    # The same question without the conversation is searched as typed.
    assert agent.answer(FOLLOW_UP).query == FOLLOW_UP
    agent.conversation_aware = False
    try:
        assert agent.answer(FOLLOW_UP, agent.history).query == FOLLOW_UP
    finally:
        agent.conversation_aware = True
        agent.reset()


def test_a_self_contained_question_is_searched_as_typed_whatever_came_before(agent):
    question = "What was the name of the Toyota compact car?"
    result = agent.answer(question, [(FIRST, "Denver Broncos")])
    assert result.query == question
    assert [f.id for f in result.fragments] == [f.id for f in agent.answer(question).fragments]


def test_dependent_questions_and_their_salient_terms():
    assert needs_context("Where was the game played?") and needs_context("What was his birth name?")
    assert not needs_context(FIRST) and not needs_context("Who founded the University of Warsaw in 1816?")
    assert not needs_context("What is the most common form of treatment for asthma?")  # long: its own topic
    assert salient_terms("Who founded the University of Warsaw in 1816?") == ["University of Warsaw", "1816"]
    assert salient_terms("Which NFL team won Super Bowl 50?") == ["NFL", "Super Bowl 50"]
    history = [("What is the capital of Poland?", "Warsaw"), (FIRST, "Denver Broncos"), ("Why?", "no idea")]
    # the latest exchange that names something: the Super Bowl one, not the Warsaw one
    assert contextual_query(FOLLOW_UP, history) == f"{FOLLOW_UP} NFL Super Bowl 50 Denver Broncos"
    assert contextual_query(FOLLOW_UP, []) == FOLLOW_UP
    assert contextual_query("Where did the Denver Broncos play?", history) == "Where did the Denver Broncos play?"


def test_a_dependent_question_keeps_its_own_best_matches_beside_the_conversations():
    def fragments(*ids):
        return [Fragment(i, "title", "text", 1.0) for i in ids]

    contextual, as_typed = fragments("a", "b", "c", "d", "e"), fragments("x", "a", "y", "z", "w")
    assert [f.id for f in merge_retrievals(contextual, as_typed, 5)] == ["a", "b", "c", "x", "y"]
    assert [f.id for f in merge_retrievals(contextual, as_typed, 3)] == ["a", "b", "x"]
    assert [f.id for f in merge_retrievals(contextual, fragments("b", "a"), 4)] == ["a", "b", "c", "d"]  # no repeats


def test_follow_up_set_leans_on_the_first_question():
    assert lean_on("When was Super Bowl 50 played?", FIRST, "Super_Bowl_50") == "When was it played?"
    assert lean_on("What was Genghis Khan's birth name?", "Where was Genghis Khan born?", "Genghis_Khan") == "What was its birth name?"
    assert lean_on("What is the capital of France?", FIRST, "Super_Bowl_50") is None
    follow_ups = follow_up_set()
    assert len(follow_ups) >= 100 and len({f.first.id for f in follow_ups}) == len(follow_ups)
    for f in follow_ups:
        assert f.question != f.original and needs_context(f.question) and f.passage_id == f.first.passage_id and f.answers
    assert follow_up_set() == follow_ups  # deterministic


def test_the_span_is_chosen_by_reader_score_and_retrieval_score():
    top, second = Fragment("a", "", "Denver won.", score=2.0), Fragment("b", "", "Carolina lost.", score=0.0)
    candidates = [ReaderSpan("Denver", 0.3, top, 0, 6), ReaderSpan("Carolina", 0.6, second, 0, 8)]
    assert select_span(candidates, 0.0).text == "Carolina"  # the reader alone: the higher p(start)·p(end)
    assert select_span(candidates, 1.0).text == "Denver"  # log 0.3 + 2 > log 0.6 + 0
    assert select_span([ReaderSpan("", 0.9, top)], 1.0).fragment is None  # an empty span is no answer


def test_threshold_is_the_highest_whose_abstentions_are_mostly_wrong():
    scores = [0.05, 0.1, 0.2, 0.3, 0.6, 0.9]
    wrong = [True, True, True, False, True, False]
    # withholding the 3 lowest: 3/3 wrong; the 4 lowest: 3/4 < 0.8; the 5 lowest: 4/5 = 0.8
    assert choose_threshold(scores, wrong, 0.8) == 0.9
    assert choose_threshold(scores, wrong, 0.9) == 0.3
    assert choose_threshold([0.5, 0.7], [False, False]) == 0.0  # never abstain when low scores are right
    report = abstention_report(scores, [0.0, 0.0, 0.0, 1.0, 0.0, 1.0], 0.3)
    assert report["abstentions"] == 3 and report["abstention_precision"] == 1.0 and report["coverage"] == 0.5
    assert report["f1"] == pytest.approx(100 * 2 / 6) and report["answered_f1"] == pytest.approx(100 * 2 / 3)
