"""Question answering Space: a context and a question in, the answer highlighted in the context and its score out.

It runs the SQuAD-tuned MiniLM's ONNX export (`OnnxQuestionAnswerer`, int8 by default) — the object the REST
API's `/qa` calls — with the REST request schema (`QARequest`) deciding what input is acceptable.
"""

from __future__ import annotations

import re

import gradio as gr

from pocketlm.inference.qa_postprocess import Answer
from pocketlm.serving.models import ServedModel
from pocketlm.serving.schemas import QARequest
from pocketlm.spaces import SPACE_TITLES
from pocketlm.spaces.common import ComputeGuard, standalone, validated
from pocketlm.spaces.examples import QA_CONTEXT, QA_EXAMPLES

TITLE = SPACE_TITLES["question_answering"]
LABELS = {"question": "Question", "context": "Context"}
ANSWER_LABEL = "answer"



def highlight(context: str, answer: Answer) -> list[tuple[str, str | None]]:
    """The context as `gr.HighlightedText` segments, the answer span labelled; together, all of the context.

    The text around the answer goes word by word: the component lays each segment out as one box, so long
    unlabelled segments would break the line around the answer instead of flowing like a paragraph.
    """
    def words(text: str) -> list[tuple[str, None]]:
        return [(word, None) for word in re.findall(r"\s*\S+\s*|\s+", text)]

    if answer.end <= answer.start:
        return words(context)
    return [*words(context[: answer.start]), (context[answer.start : answer.end], ANSWER_LABEL), *words(context[answer.end :])]


def render(qa: ServedModel, guard: ComputeGuard | None = None) -> None:
    """Lay the Space out in the current Blocks context; its event is the API endpoint `/answer_question`."""
    guard = guard or ComputeGuard()
    gr.Markdown(
        "Ask a question about a passage: the model picks the span of the passage that answers it. Long passages "
        f"are read in overlapping windows.  \nServed from `{qa.label}` with ONNX Runtime — the same code as the "
        "REST API's `/qa`."
    )
    with gr.Row():
        with gr.Column():
            question = gr.Textbox(label=LABELS["question"], value=QA_EXAMPLES[0][0], elem_id="qa-question")
            context = gr.Textbox(label=LABELS["context"], lines=8, value=QA_CONTEXT, elem_id="qa-context")
            button = gr.Button("Answer", variant="primary", elem_id="qa-submit")
        with gr.Column():
            answer_box = gr.Textbox(label="Answer", interactive=False, elem_id="qa-answer")
            score = gr.Number(label="Score: p(start) × p(end)", precision=4, interactive=False, elem_id="qa-score")
            highlighted = gr.HighlightedText(
                label="The answer in its context", color_map={ANSWER_LABEL: "green"}, show_legend=False, show_inline_category=False,
                elem_id="qa-highlighted",
            )
            details = gr.Markdown()
    gr.Examples(QA_EXAMPLES, [question, context], example_labels=[question for question, _ in QA_EXAMPLES])

    async def answer_question(question: str, context: str):
        request = validated(QARequest, LABELS, question=question, context=context)
        answer: Answer = await guard.call(qa.runtime.answer, request.question, request.context)
        if not answer.text:
            gr.Warning("The model found no answer span in this context.")
        note = f"characters {answer.start}–{answer.end} of {len(request.context)} · `{qa.label}`"
        return answer.text, round(answer.score, 4), highlight(request.context, answer), note

    gr.on([button.click, question.submit], answer_question, [question, context], [answer_box, score, highlighted, details],
          api_name="answer_question")


def build(qa: ServedModel, guard: ComputeGuard | None = None) -> gr.Blocks:
    return standalone(TITLE, render, qa, guard)


def from_args(args, folders: dict) -> gr.Blocks:
    """The Space of `spaces/question_answering/app.py`, from its command line and fetched models."""
    from pocketlm.serving.models import load_qa

    return build(load_qa(folders["qa"], args.qa_precision, args.threads))
