"""Benchmark the RAG agent's answers and follow-up questions, through the agent the chat and the REPL run.

    python benchmarks/rag_answers.py      # writes benchmarks/results/rag_answers/rag_answers.{json,md,png}

1. Answers: each of the 300 dev questions goes through `RagAgent.answer` (published index, k = 3, the
   extractive reader, the generator beside it). The abstention threshold is chosen on the even-numbered
   questions (`pocketlm.rag.answer.choose_threshold`: the highest whose abstentions are >= 80 % wrong
   spans) and reported on the odd-numbered ones, never used for a choice: EM/F1 (an abstention scores 0),
   coverage, the precision of the abstentions; the generator's own EM/F1 beside.
2. Follow-ups: the follow-up set (`pocketlm.rag.followups`: a second question on the same passage, rewritten
   to lean on the first) is retrieved after the first exchange (the first question and the agent's answer
   to it), recall@5 of the gold passage for: the question as typed, the agent's conversation-aware retrieval
   (`RagAgent.retrieve`: `pocketlm.rag.conversation`), and the question with the whole last exchange appended. The same for
   self-contained questions asked after an unrelated exchange (each dev question after the one before it),
   which must not get worse. Then the follow-ups' answers, with and without the conversation.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

from pocketlm import MINILM_SQUAD, RAG_INDEX, TINY_LM_RAG_LORA
from pocketlm.benchmarking import markdown_table, write_results
from pocketlm.rag.answer import (
    ABSTAIN_BELOW, MIN_ABSTENTION_PRECISION, RETRIEVAL_WEIGHT, RETRIEVAL_WEIGHTS, WRONG_BELOW_F1, abstention_report,
    choose_threshold, select_span, span_f1,
)
from pocketlm.rag.chain import NOT_FOUND, RagAgent, cite
from pocketlm.rag.corpus import rag_dev
from pocketlm.rag.evaluation import answer_report
from pocketlm.rag.followups import follow_up_set
from pocketlm.settings import REPO_ROOT

K = 5


def answer_all(agent: RagAgent, questions: Sequence[str], histories: Sequence[list] | None = None) -> list:
    """`agent.answer` for each question (after its history), never abstaining: the threshold is applied after."""
    histories = histories or [[] for _ in questions]
    return [agent.answer(q, h) for q, h in zip(questions, histories)]


def weight_sweep(results: list, golds: list, tune: list[int], held_out: list[int]) -> list[dict]:
    """F1 (never abstaining) of the span `select_span` picks from each answer's candidates, for each weight."""
    rows = []
    for weight in RETRIEVAL_WEIGHTS:
        f1 = [span_f1(select_span(r.candidates, weight).text, gold) for r, gold in zip(results, golds)]
        rows.append({"weight": weight, "tuning_f1": 100 * float(np.mean([f1[i] for i in tune])),
                     "held_out_f1": 100 * float(np.mean([f1[i] for i in held_out]))})
    return rows


def answers_section(agent: RagAgent, questions) -> tuple[dict, list]:
    results = answer_all(agent, [q.question for q in questions])
    golds = [list(q.answers) for q in questions]
    tune, held_out = list(range(0, len(questions), 2)), list(range(1, len(questions), 2))
    sweep = weight_sweep(results, golds, tune, held_out)
    weight = max(sweep, key=lambda row: row["tuning_f1"])["weight"]
    spans = [select_span(r.candidates, weight) for r in results]
    scores = [s.score for s in spans]
    f1s = [span_f1(s.text, gold) for s, gold in zip(spans, golds)]
    threshold = choose_threshold([scores[i] for i in tune], [f1s[i] < WRONG_BELOW_F1 for i in tune])

    def report(rows: list[int], name: str) -> dict:
        em = answer_report([spans[i].text if scores[i] >= threshold else "" for i in rows], [golds[i] for i in rows])
        return {"split": name, "questions": len(rows), "exact_match": em["exact_match"],
                **abstention_report([scores[i] for i in rows], [f1s[i] for i in rows], threshold)}

    rows = [report(tune, "tuning (even)"), report(held_out, "held-out (odd)"), report(list(range(len(questions))), "all")]
    generator = answer_report([r.generated for r in results], golds)
    # Would the generator's text do better where the reader abstains? Its F1 on those questions, all of them and
    # those where the fragments hold its text verbatim (the only ones it could be trusted on).
    withheld = [i for i in range(len(questions)) if scores[i] < threshold]
    verbatim = [i for i in withheld if cite(results[i].generated, results[i].fragments)]
    generator["f1_where_reader_abstains"] = 100 * float(np.mean([span_f1(results[i].generated, golds[i]) for i in withheld])) if withheld else None
    generator["verbatim_where_reader_abstains"] = len(verbatim)
    generator["f1_verbatim_where_reader_abstains"] = (
        100 * float(np.mean([span_f1(results[i].generated, golds[i]) for i in verbatim])) if verbatim else None)
    retrieved = float(np.mean([q.passage_id in [f.id for f in r.fragments] for q, r in zip(questions, results)]))
    return {"threshold": threshold, "retrieval_weight": weight, "weights": sweep, "rows": rows, "generator": generator, "gold_in_top_k": retrieved,
            "per_question": {"score": scores, "f1": f1s}, "examples": [r.to_dict() for r in results[:3]]}, \
        [s.text if s.score >= threshold else NOT_FOUND for s in spans]


def recall(agent: RagAgent, queries: list[str] | list[list[str]], gold: list[str]) -> float:
    """Share of gold passages among the top K of each query (or among each list of ids already retrieved)."""
    ranked = queries if queries and isinstance(queries[0], list) else agent.retriever.ranked_ids(queries, K)
    return float(np.mean([g in ids for g, ids in zip(gold, ranked)]))


def strategies(agent: RagAgent, questions: list[str], histories: list[list[tuple[str, str]]]) -> dict[str, list]:
    """What each compared strategy searches for each question: a query, or (the agent's) the top-K ids it retrieves."""
    return {
        "question as typed": questions,
        "conversation-aware (the agent's)": [[f.id for f in agent.retrieve(q, h, K)[1]] for q, h in zip(questions, histories)],
        "last exchange appended": [f"{q} {h[-1][0]} {h[-1][1]}" if h else q for q, h in zip(questions, histories)],
    }


def follow_up_section(agent: RagAgent, questions, first_answers: list[str]) -> dict:
    """Recall@5 of follow-ups and of self-contained questions under each query strategy; follow-up answer F1."""
    follow_ups = follow_up_set()
    answer_of = {q.id: answer for q, answer in zip(questions, first_answers)}
    histories = [[(f.first.question, answer_of[f.first.id])] for f in follow_ups]
    texts, gold = [f.question for f in follow_ups], [f.passage_id for f in follow_ups]
    rows = [{"questions": "follow-ups", "strategy": name, f"recall@{K}": recall(agent, queries, gold)}
            for name, queries in strategies(agent, texts, histories).items()]
    rows.append({"questions": "follow-ups, original wording", "strategy": "question as typed",
                 f"recall@{K}": recall(agent, [f.original for f in follow_ups], gold)})
    # Self-contained questions after an unrelated exchange: each dev question after the one before it.
    previous = [[(questions[i - 1].question, answer_of[questions[i - 1].id])] for i in range(1, len(questions))]
    own = [q.question for q in questions[1:]]
    own_gold = [q.passage_id for q in questions[1:]]
    rows += [{"questions": "self-contained, after an unrelated exchange", "strategy": name, f"recall@{K}": recall(agent, queries, own_gold)}
             for name, queries in strategies(agent, own, previous).items()]
    answers = []
    for aware in (False, True):
        agent.conversation_aware = aware
        results = answer_all(agent, texts, histories)
        answers.append({"strategy": "conversation-aware" if aware else "question as typed",
                        **answer_report([r.span.text for r in results], [list(f.answers) for f in follow_ups])})
    agent.conversation_aware = True
    examples = [{"first": f.first.question, "follow_up": f.question, "query": agent.retrieval_query(f.question, h)}
                for f, h in list(zip(follow_ups, histories))[:5]]
    return {"count": len(follow_ups), "recall": rows, "answers": answers, "examples": examples}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", default=RAG_INDEX)
    parser.add_argument("--reader", default=MINILM_SQUAD)
    parser.add_argument("--lora", default=TINY_LM_RAG_LORA, help="the generator's LoRA (or none)")
    parser.add_argument("--k", type=int, default=3, help="fragments per answer")
    parser.add_argument("--output_dir", default=str(REPO_ROOT / "benchmarks" / "results" / "rag_answers"))
    args = parser.parse_args(argv)

    agent = RagAgent.from_pretrained(args.index, lora=args.lora, reader=args.reader, k=args.k, abstain_below=0.0)
    _, questions = rag_dev()
    answers, first_answers = answers_section(agent, questions)
    threshold = answers["threshold"]
    agent.retrieval_weight = answers["retrieval_weight"]
    print(f"chosen retrieval weight {answers['retrieval_weight']} (default in pocketlm.rag.answer: {RETRIEVAL_WEIGHT}), "
          f"threshold {threshold:.3f} (default: {ABSTAIN_BELOW})", flush=True)
    follow_ups = follow_up_section(agent, questions, first_answers)
    held_out = answers["rows"][1]
    rec = {(r["questions"], r["strategy"]): r[f"recall@{K}"] for r in follow_ups["recall"]}
    figures = {
        f"RAG answer F1, held-out dev (k={args.k}, reader + abstention)": f"{held_out['f1']:.1f}",
        "RAG answer F1, all 300 dev questions": f"{answers['rows'][2]['f1']:.1f}",
        "abstention precision (held-out dev)": f"{held_out['abstention_precision']:.2f} ({held_out['abstentions']} abstention{'' if held_out['abstentions'] == 1 else 's'})",
        "generator F1 (same prompts)": f"{answers['generator']['f1']:.1f}",
        f"follow-up recall@{K}: as typed → conversation-aware": (
            f"{rec[('follow-ups', 'question as typed')]:.3f} → {rec[('follow-ups', 'conversation-aware (the agent' + chr(39) + 's)')]:.3f}"),
        f"self-contained recall@{K} after an unrelated exchange: as typed → conversation-aware": (
            f"{rec[('self-contained, after an unrelated exchange', 'question as typed')]:.3f} → "
            f"{rec[('self-contained, after an unrelated exchange', 'conversation-aware (the agent' + chr(39) + 's)')]:.3f}"),
    }
    markdown = render_markdown(args, agent, answers, follow_ups)
    write_results("rag_answers", {"reader": args.reader, "k": args.k, "answers": answers, "follow_ups": follow_ups},
                  markdown, figures=figures, plot=lambda figure: plot(figure, answers["per_question"], threshold), output_dir=args.output_dir)
    return 0


def render_markdown(args, agent: RagAgent, answers: dict, follow_ups: dict) -> str:
    percent = {"exact_match": ".1f", "f1": ".1f", "f1_without_abstaining": ".1f", "answered_f1": ".1f", "coverage": ".2f",
               "abstention_precision": ".2f", "threshold": ".3f"}
    columns = [("split", "questions"), ("questions", "n"), ("exact_match", "EM"), ("f1", "F1"),
               ("f1_without_abstaining", "F1, never abstaining"), ("answered_f1", "F1 of the answered"),
               ("coverage", "answered"), ("abstentions", "abstentions"), ("abstention_precision", "abstention precision")]
    return (
        f"# RAG agent: grounded answers and follow-up questions\n\n{agent.description}; index {args.index}, k = {args.k}.\n\n"
        f"## Answers (the 300 dev questions)\n\nChoosing among the fragments' spans: log(reader score) + w × retrieval score "
        "(F1 never abstaining; w chosen on the tuning half):\n\n"
        + markdown_table(answers["weights"], [("weight", "w"), ("tuning_f1", "F1, tuning half"), ("held_out_f1", "F1, held-out half")], ".1f")
        + f"\nw = {answers['retrieval_weight']:g}; threshold {answers['threshold']:.3f}, chosen on the tuning half "
        f"(abstentions >= {MIN_ABSTENTION_PRECISION:.0%} wrong spans, a span being wrong under F1 {WRONG_BELOW_F1}). "
        f"Gold passage among the {args.k} fragments: {answers['gold_in_top_k']:.3f}. An abstention scores 0.\n\n"
        + markdown_table(answers["rows"], columns, percent)
        + f"\nThe generator on the same prompts: EM {answers['generator']['exact_match']:.1f}, F1 {answers['generator']['f1']:.1f}; "
        f"where the reader abstains, F1 {_number(answers['generator']['f1_where_reader_abstains'])} "
        f"({answers['generator']['verbatim_where_reader_abstains']} of its answers there are verbatim in the fragments, "
        f"F1 {_number(answers['generator']['f1_verbatim_where_reader_abstains'])}).\n\n"
        f"## Follow-up questions ({follow_ups['count']}) and self-contained ones\n\n"
        + markdown_table(follow_ups["recall"], [("questions", "questions"), ("strategy", "retrieval query"), (f"recall@{K}", f"recall@{K}")], ".3f")
        + "\nFollow-up answers (reader, never abstaining):\n\n"
        + markdown_table(follow_ups["answers"], [("strategy", "retrieval query"), ("exact_match", "EM"), ("f1", "F1")], ".1f")
    )


def _number(value) -> str:
    return "–" if value is None else f"{value:.1f}"


def plot(figure, per_question: dict, threshold: float) -> None:
    ax = figure.add_subplot(1, 1, 1)
    scores, f1s = np.array(per_question["score"]), np.array(per_question["f1"])
    right = f1s >= WRONG_BELOW_F1
    ax.hist([scores[right], scores[~right]], bins=20, range=(0, 1), stacked=True, color=["tab:green", "tab:orange"],
            label=[f"right span (F1 >= {WRONG_BELOW_F1})", "wrong span"])
    ax.axvline(threshold, color="tab:red", linestyle="--", label=f"abstain below {threshold:.2f}")
    ax.set_xlabel("reader score of the best span (p(start)·p(end))")
    ax.set_ylabel("dev questions")
    ax.legend()


if __name__ == "__main__":
    from pocketlm.cli import run

    run(main)
