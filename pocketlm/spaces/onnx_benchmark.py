"""ONNX vs PyTorch Space: time the QA model on the user's own question and context, live, in three runtimes —
PyTorch fp32, ONNX Runtime fp32, ONNX Runtime int8 — next to the recorded results of `benchmarks/qa_latency.py`.

The runtimes are the ones the recorded benchmark uses (`pocketlm.inference.qa_loading`), timed the same way
(`pocketlm.benchmarking`: warm-up, then batch-1 requests end to end, p50/p95) at equal thread counts.
PyTorch (torch + transformers: ~4 s of imports on this CPU) loads on first use, or in the background once the
suite is up (`QABackends.load`), so it never delays the start of the ONNX endpoints.
"""

from __future__ import annotations

import os
from pathlib import Path

import gradio as gr

from pocketlm import MINILM_SQUAD, MINILM_SQUAD_ONNX
from pocketlm.benchmarking import RESULTS_DIR, latency_summary, markdown_table, paired_bars, read_results, time_requests
from pocketlm.serving.schemas import MAX_CONTEXT_CHARS as QA_MAX_CONTEXT_CHARS
from pocketlm.serving.schemas import QARequest
from pocketlm.spaces import SPACE_TITLES
from pocketlm.spaces.common import ComputeGuard, LoadOnce, local_folder, standalone, validated
from pocketlm.spaces.examples import QA_EXAMPLES
from pocketlm.spaces.question_answering import LABELS

TITLE = SPACE_TITLES["onnx_benchmark"]
RUNTIME_LABELS = {"pytorch": "PyTorch fp32", "onnxruntime-fp32": "ONNX Runtime fp32", "onnxruntime-int8": "ONNX Runtime int8"}
TABLE_HEADERS = ["runtime", "p50 ms", "p95 ms", "speed-up (p50)", "answer", "score"]
RECORDED_RESULTS = RESULTS_DIR / "qa_latency"
MAX_RUNS = 50
DEFAULT_RUNS = 5
MAX_CONTEXT_CHARS = 2000
"""Tighter than `/qa`'s 20,000: each runtime holds the compute slot for 1 + `runs` answers, and PyTorch on a
20,000-character context (~20 windows) would hold it for tens of seconds. 2,000 characters is one or two
windows, more than most SQuAD paragraphs (~750 characters on average)."""


class QABackends(LoadOnce[dict]):
    """The QA model in the three runtimes ({backend: QuestionAnswerer}), loaded once with one thread count."""

    def __init__(self, pytorch_model: str = MINILM_SQUAD, onnx_model: str = MINILM_SQUAD_ONNX, threads: int | None = None):
        super().__init__(self._load_all)
        self.pytorch_model, self.onnx_model = pytorch_model, onnx_model
        self.threads = threads or min(os.cpu_count() or 1, 4)

    def _load_all(self) -> dict:
        from pocketlm.inference.qa_loading import BACKENDS, load_question_answerer

        onnx = local_folder(self.onnx_model)
        models = {backend: onnx for backend in BACKENDS} | {"pytorch": local_folder(self.pytorch_model)}
        return {backend: load_question_answerer(models[backend], backend, threads=self.threads, batch_size=1)
                for backend in BACKENDS}

    def time(self, backend: str, question: str, context: str, runs: int) -> tuple[dict, object]:
        """p50/p95 of `runs` answers after one warm-up, and the answer itself."""
        answerer = self.load()[backend]
        timings = time_requests(lambda _: answerer.answer(question, context), [None] * runs, warmup=1)
        return latency_summary(timings), answerer.answer(question, context)


def live_rows(results: dict[str, tuple[dict, object]]) -> list[list]:
    baseline = results["pytorch"][0]["p50_ms"]
    return [
        [RUNTIME_LABELS[backend], stats["p50_ms"], stats["p95_ms"], round(baseline / stats["p50_ms"], 2), answer.text,
         round(answer.score, 4)]
        for backend, (stats, answer) in results.items()
    ]


def latency_figure(rows: list[list], title: str):
    """Bars of p50 and p95 per runtime (matplotlib figure for `gr.Plot`: rendered server-side, no CDN)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    paired_bars(ax, [row[0] for row in rows], {"p50": [row[1] for row in rows], "p95": [row[2] for row in rows]},
                "ms per question", title, annotations=[f"{row[3]:.2f}x" for row in rows])
    fig.tight_layout()
    plt.close(fig)
    return fig


def recorded_results(folder: Path = RECORDED_RESULTS) -> tuple[str, str | None]:
    """The recorded benchmark as Markdown (table, settings, machine) and its plot, or how to produce them."""
    results = read_results(folder, "qa_latency")
    if results is None:
        return ("_No recorded results yet: run `python benchmarks/qa_latency.py` "
                "(writes `benchmarks/results/qa_latency/`)._", None)
    columns = [("runtime", "runtime"), ("p50_ms", "p50 ms"), ("p95_ms", "p95 ms"), ("speedup_p50", "speed-up (p50)"),
               ("size_mb", "size MB"), ("exact_match", "EM"), ("f1", "F1")]
    settings = results.get("settings", {})
    text = (
        f"{markdown_table(results['rows'], columns, '.2f')}\n{settings.get('requests', '?')} SQuAD validation questions "
        f"per runtime, batch 1, {settings.get('threads', '?')} threads · {results['machine']} · {results['date']}  \n"
        f"Command: `{results['command']}`"
    )
    plot = folder / "qa_latency.png"
    return text, str(plot) if plot.is_file() else None


def render(backends: QABackends, guard: ComputeGuard | None = None, recorded: Path = RECORDED_RESULTS) -> None:
    """Lay the Space out in the current Blocks context; its event is the API endpoint `/compare_runtimes`."""
    guard = guard or ComputeGuard()
    gr.Markdown(
        "Time the QA model on **your** question and passage in three runtimes: PyTorch fp32, ONNX Runtime fp32 "
        f"and ONNX Runtime with dynamic int8 quantisation — batch 1, end to end (tokenise, model, span), "
        f"{backends.threads} threads each. Models: `{backends.pytorch_model}` and `{backends.onnx_model}`."
    )
    with gr.Row():
        with gr.Column():
            question = gr.Textbox(label=LABELS["question"], value=QA_EXAMPLES[0][0], elem_id="bench-question")
            context = gr.Textbox(label=LABELS["context"], lines=6, value=QA_EXAMPLES[0][1], elem_id="bench-context")
            runs = gr.Slider(3, MAX_RUNS, value=DEFAULT_RUNS, step=1, label="Timed runs per runtime (after 1 warm-up)")
            button = gr.Button("Run the comparison", variant="primary", elem_id="bench-submit")
        with gr.Column():
            table = gr.Dataframe(headers=TABLE_HEADERS, label="Live latency on your input", interactive=False,
                                 elem_id="bench-table")
            plot = gr.Plot(label="Live latency", elem_id="bench-plot")
    with gr.Accordion("Recorded benchmark (benchmarks/qa_latency.py)", open=True):
        text, image = recorded_results(recorded)
        gr.Markdown(text)
        if image:
            gr.Image(image, label="Recorded latency", show_label=False, height=320, interactive=False)
    gr.Examples(QA_EXAMPLES, [question, context], example_labels=[question for question, _ in QA_EXAMPLES])

    async def compare_runtimes(question: str, context: str, runs: float):
        request = validated(QARequest, LABELS, question=question, context=context)
        if len(request.context) > MAX_CONTEXT_CHARS:
            raise gr.Error(f"{LABELS['context']}: at most {MAX_CONTEXT_CHARS} characters in this benchmark (got "
                           f"{len(request.context)}); the Question answering tab takes up to {QA_MAX_CONTEXT_CHARS}",
                           title="Please check the input")
        runs = int(runs)
        if not 1 <= runs <= MAX_RUNS:
            raise gr.Error(f"Timed runs: between 1 and {MAX_RUNS}, got {runs}", title="Please check the input")
        await backends.loaded_value("the three runtimes")
        from pocketlm.inference.qa_loading import BACKENDS

        # One compute slot per runtime: REST requests and other users interleave between them.
        results = {
            backend: await guard.call(backends.time, backend, request.question, request.context, runs)
            for backend in BACKENDS
        }
        rows = live_rows(results)
        return rows, latency_figure(rows, f"Your input, {runs} runs, batch 1, {backends.threads} threads")

    button.click(compare_runtimes, [question, context, runs], [table, plot], api_name="compare_runtimes")


def build(backends: QABackends, guard: ComputeGuard | None = None, recorded: Path = RECORDED_RESULTS) -> gr.Blocks:
    return standalone(TITLE, render, backends, guard, recorded)


def from_args(args, folders: dict) -> gr.Blocks:
    """The Space of `spaces/onnx_benchmark/app.py`: the three runtimes are loaded before the page opens."""
    backends = QABackends(folders["qa_pytorch"], folders["qa"], args.threads)
    backends.load()
    return build(backends)
