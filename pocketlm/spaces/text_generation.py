"""Text generation Space: continue a prompt with the tiny LM, top-k sampling, tokens streamed as they are made.

It runs the LM's ONNX export through the same `OnnxCausalLM.stream_text` as the REST API's
`/generate/stream`, with the same request schema (`GenerateRequest`: limits and field names) and, in the
suite, the same compute slots.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import gradio as gr

from pocketlm.inference.onnx_lm import OnnxCausalLM
from pocketlm.serving.app import sampling_params
from pocketlm.serving.models import ServedModel
from pocketlm.serving.schemas import EXAMPLE_PROMPT, MAX_NEW_TOKENS, GenerateRequest
from pocketlm.spaces import SPACE_TITLES
from pocketlm.spaces.common import ComputeGuard, in_batches, standalone, validated
from pocketlm.spaces.examples import GENERATION_EXAMPLES

TITLE = SPACE_TITLES["text_generation"]
LABELS = {"prompt": "Prompt", "top_k": "Top-k", "temperature": "Temperature", "max_new_tokens": "Max new tokens",
          "seed": "Seed"}


def render(lm: ServedModel, guard: ComputeGuard | None = None) -> None:
    """Lay the Space out in the current Blocks context; its event is the API endpoint `/generate_text`."""
    guard = guard or ComputeGuard()
    runtime: OnnxCausalLM = lm.runtime
    gr.Markdown(
        f"Continue a prompt with pocketlm's tiny Llama-architecture LM, sampling among the **top-k** tokens at "
        f"a **temperature**; each token appears as soon as it is generated.  \nServed from `{lm.label}` "
        "with ONNX Runtime (KV cache), the same code as the REST API's `/generate/stream`."
    )
    with gr.Row():
        with gr.Column():
            prompt = gr.Textbox(label=LABELS["prompt"], lines=4, value=EXAMPLE_PROMPT, elem_id="generation-prompt")
            with gr.Row():
                top_k = gr.Slider(1, 200, value=50, step=1, label=LABELS["top_k"])
                temperature = gr.Slider(0.05, 2.0, value=0.8, step=0.05, label=LABELS["temperature"])
            with gr.Row():
                max_new_tokens = gr.Slider(1, MAX_NEW_TOKENS, value=48, step=1, label=LABELS["max_new_tokens"])
                seed = gr.Number(value=0, precision=0, label="Seed (empty: a fresh one each time)")
            button = gr.Button("Generate", variant="primary", elem_id="generation-submit")
        with gr.Column():
            output = gr.Textbox(label="Continuation", lines=9, interactive=False, elem_id="generation-output")
            stats = gr.Markdown(elem_id="generation-stats")
    gr.Examples(GENERATION_EXAMPLES, [prompt, top_k, temperature, max_new_tokens, seed])

    async def generate(prompt: str, top_k: float, temperature: float, max_new_tokens: float, seed: float | None) -> AsyncIterator[tuple[str, str]]:
        request = validated(
            GenerateRequest, LABELS, prompt=prompt, top_k=top_k, temperature=temperature,
            max_new_tokens=max_new_tokens, seed=seed, do_sample=True,
        )
        ids = runtime.encode(request.prompt)
        if problem := runtime.prompt_problem(ids, request.max_new_tokens):
            raise gr.Error(f"{LABELS['prompt']}: {problem}", title="Please check the input")
        params = sampling_params(request, guard.admission.limits)
        text, count, started, first = "", 0, time.perf_counter(), None
        yield "", "_generating…_"
        async for batch in in_batches(guard.stream(runtime.stream_text(ids, params))):
            count += len(batch)
            first = first or time.perf_counter() - started
            text += "".join(piece for _, piece in batch)
            yield text, f"_{count} tokens…_"
        elapsed = time.perf_counter() - started
        yield text, (
            f"{count} tokens in {1000 * elapsed:.0f} ms ({count / elapsed:.0f} tokens/s, first token after "
            f"{1000 * (first or elapsed):.0f} ms) · prompt {len(ids)} tokens · `{lm.label}`"
        )

    gr.on([button.click, prompt.submit], generate, [prompt, top_k, temperature, max_new_tokens, seed], [output, stats],
          api_name="generate_text")


def build(lm: ServedModel, guard: ComputeGuard | None = None) -> gr.Blocks:
    return standalone(TITLE, render, lm, guard)


def from_args(args, folders: dict) -> gr.Blocks:
    """The Space of `spaces/text_generation/app.py`, from its command line and fetched models."""
    from pocketlm.serving.models import load_lm

    return build(load_lm(folders["lm"], args.lm_precision, args.threads))
