"""Export a causal LM (pocketlm's tiny Llama, gpt2, any `AutoModelForCausalLM`) to ONNX with its KV cache.

One graph takes the past keys and values and returns the present ones (the layout optimum's
`text-generation-with-past` export had), computes logits for the last position only, and is checked against
PyTorch on a prefill and on cached steps. A Llama is written in ONNX's own attention operators
(`pocketlm.inference.llama_onnx`), any other model traced by `torch.onnx.export`. onnxruntime's quantisers write
two int8 twins beside it, dynamic and static. `check_lm_export` then measures what the model card states: logit
and greedy agreement of the ONNX graphs with transformers' own `generate`, and whether batching changes a graph's
greedy tokens.
"""

from __future__ import annotations

from pathlib import Path

from pocketlm.inference.onnx_lm import LM_PRECISIONS, STATIC_INT8_FILE, OnnxCausalLM, SamplingParams, lm_graph_file
from pocketlm.inference.qa_engine import FP32_FILE, INT8_FILE

TASK = "text-generation-with-past"


def export_causal_lm(model_name_or_path: str, output_dir: str | Path, *, quantize: bool = True,
                     traced: bool = False) -> Path:
    """Write `model.onnx` (fp32, KV cache), optionally the int8 graphs (`model_quantized.onnx`, dynamic;
    `model_static_quantized.onnx`, static), config and tokenizer files. `traced=True` traces a Llama with
    `torch.onnx` too, instead of writing it in ONNX's attention operators (what `benchmarks/lm_graph.py` compares).

    The tokenizer goes along as `tokenizer.json`, which the `tokenizers` library reads without transformers.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pocketlm.hub import resolve
    from pocketlm.inference import llama_onnx
    from pocketlm.inference.torch_onnx import check_against_torch, export_with_torch

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    source = resolve(model_name_or_path)
    # Eager attention: its mask arithmetic traces for any padding and past length (SDPA's can skip the mask).
    model = AutoModelForCausalLM.from_pretrained(source, attn_implementation="eager").eval()
    graph = _with_past_graph(model)
    # Traced on a cached step over a left-padded batch, so that no shape or padding special case is baked in.
    inputs = _decoder_inputs(model, graph, batch=2, new=4, past=3, padded_row=0)
    checks = [_decoder_inputs(model, graph, batch=1, new=5, past=0),  # a prefill
              _decoder_inputs(model, graph, batch=3, new=1, past=6, padded_row=2)]
    if llama_onnx.supports(model.config) and not traced:  # a Llama: in ONNX's attention operators, a quarter of the nodes
        llama_onnx.build_llama_decoder(model, output_dir / FP32_FILE)
        check_against_torch(graph, output_dir / FP32_FILE, graph.output_names, [inputs, *checks])
    else:
        export_with_torch(graph, inputs, output_dir / FP32_FILE, graph.output_names, _decoder_axes(graph), checks=checks)
    model.config.save_pretrained(output_dir)
    AutoTokenizer.from_pretrained(source).save_pretrained(output_dir)
    if not (output_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{source} has no fast tokenizer (tokenizer.json); the torch-free runtime needs one")
    if quantize:
        quantize_dynamic_int8(output_dir)
        quantize_static_int8(output_dir)
    return output_dir


def quantize_dynamic_int8(folder: str | Path) -> Path:
    """Quantise `<folder>/model.onnx` to `<folder>/model_quantized.onnx` with ONNX Runtime's dynamic int8 scheme
    as is, no fusions first: the LM's decoder has no BERT attention pattern to fuse (the QA encoder is quantised
    by `pocketlm.inference.qa_onnx_export`)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = Path(folder)
    written = folder / INT8_FILE
    # Symmetric int8 weights, per channel (more accurate than per tensor, same speed), no reduced range, every
    # operator ONNX Runtime quantises dynamically: optimum's AVX-512 VNNI preset. The resulting graph
    # (MatMulInteger / DynamicQuantizeLinear) runs on any CPU. The weight matmuls and the embedding only: the
    # quantiser would take ONNX's own `Attention` (opset 23) for the contrib op of that name and break the graph.
    quantize_dynamic(str(folder / FP32_FILE), str(written), weight_type=QuantType.QInt8, per_channel=True,
                     reduce_range=False, op_types_to_quantize=["MatMul", "Gather"],
                     extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
    return written


STATIC_SKIPPED_PROJECTIONS = ("down_proj", "c_proj")
"""Weight matmuls the static graph keeps in fp32, besides the output layer (the graph's last matmul, whose logits
decide every greedy token): the MLP's output projection, whose input (the SwiGLU/GELU product) has the widest,
most outlier-heavy range of the block, which one fixed scale maps coarsely (gpt2's attention output shares the
`c_proj` name and stays fp32 too). Quantising them too halved the greedy agreement with fp32 on the
tiny LM (0.36 against 0.70 with them kept, 16 WikiText-2 prompts, 32 tokens each)."""


def quantize_static_int8(folder: str | Path, calibration_prompts: int = 48, calibration_steps: int = 8) -> Path:
    """Quantise `<folder>/model.onnx` to `<folder>/model_static_quantized.onnx` with fixed activation scales.

    Dynamic int8 measures each activation's range per call, over the whole batch, so a request's tokens depend
    on who shares its batch and the server must decode it alone. Here the ranges are measured once, on the fp32
    graph's own prefills and cached steps over `calibration_prompts` WikiText-2 openings (min/max), and written
    into the graph (QDQ format, per-channel symmetric int8 weights): every row is quantised with the same
    scales whatever the batch, so batching changes nothing. Only weight matmuls are quantised (the attention
    products of two activations stay fp32), except `STATIC_SKIPPED_PROJECTIONS`.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    folder = Path(folder)
    feeds = _calibration_feeds(folder, calibration_prompts, calibration_steps)

    class Feeds(CalibrationDataReader):
        def __init__(self):
            self.remaining = iter(feeds)

        def get_next(self):
            return next(self.remaining, None)

    graph = onnx.load(str(folder / FP32_FILE), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    matmuls = [node for node in graph.node if node.op_type == "MatMul"]
    skipped = [node.name for node in matmuls[:-1]
               if not weights.intersection(node.input) or any(p in node.name for p in STATIC_SKIPPED_PROJECTIONS)]
    skipped.append(matmuls[-1].name)
    written = folder / STATIC_INT8_FILE
    quantize_static(str(folder / FP32_FILE), str(written), Feeds(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, op_types_to_quantize=["MatMul"],
                    nodes_to_exclude=skipped, calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"WeightSymmetric": True})
    return written


def _calibration_feeds(folder: Path, prompts: int, steps: int) -> list[dict]:
    """The inputs of every fp32 graph call while greedily continuing `prompts` WikiText-2 openings (the first
    articles, not the last ones that `check_lm_export` prompts with) by `steps` tokens, 8 mixed-length prompts
    per batch: prefills and cached steps, padded rows included, as the server feeds the graph."""
    from pocketlm.inference.batching import corpus_texts

    lm = OnnxCausalLM(folder)
    feeds: list[dict] = []
    run = lm.session.run

    def recording_run(names, feed):
        feeds.append(dict(feed))
        return run(names, feed)

    lm.session.run = recording_run  # the instance's own session only
    texts = corpus_texts(prompts, max_chars=600, first=True)
    params = SamplingParams(max_new_tokens=steps, stop_at_eos=False)
    for start in range(0, len(texts), 8):
        batch = [lm.encode(text)[: 16 + 8 * i] for i, text in enumerate(texts[start : start + 8])]
        lm.generate_ids(batch, params)
    return feeds


def _with_past_graph(model):
    """The model as one step of `OnnxCausalLM`'s decode loop: (`input_ids`, `attention_mask`, [`position_ids`],
    `past_key_values.{i}.key/value`...) → (`logits` of the last position, `present.{i}.key/value`...).

    `logits_to_keep=1`: generation reads nothing else, and the full logits of a padded prefill batch (20 prompts
    × 67 tokens by a 256 × 8,000 output matrix) would be about 40 % of its arithmetic, thrown away.
    """
    import inspect

    import torch
    from transformers import DynamicCache

    layers = model.config.num_hidden_layers
    takes_positions = "position_ids" in inspect.signature(model.forward).parameters

    class WithPast(torch.nn.Module):
        past_names = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
        output_names = ["logits", *(name.replace("past_key_values", "present") for name in past_names)]
        input_names = ["input_ids", "attention_mask", *(["position_ids"] if takes_positions else []), *past_names]

        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, *rest):
            positions, past = (rest[0], rest[1:]) if takes_positions else (None, rest)
            cache = DynamicCache(ddp_cache_data=list(zip(past[0::2], past[1::2])), config=model.config)
            extra = {"position_ids": positions} if takes_positions else {}
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True,
                             logits_to_keep=1, **extra)
            return out.logits, *(t for layer in out.past_key_values.layers for t in (layer.keys, layer.values))

    return WithPast()


def _decoder_inputs(model, graph, batch: int, new: int, past: int, padded_row: int | None = None) -> dict:
    """Random inputs for one decode step: `new` tokens after a cache of `past` (0: a prefill), `padded_row` left-padded."""
    import torch

    config = model.config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    generator = torch.Generator().manual_seed(batch * 100 + new * 10 + past)
    mask = torch.ones(batch, past + new, dtype=torch.long)
    if padded_row is not None:
        mask[padded_row, : (past + new) // 2] = 0
    inputs = {"input_ids": torch.randint(0, config.vocab_size, (batch, new), generator=generator), "attention_mask": mask}
    if "position_ids" in graph.input_names:  # positions count real tokens only, as `OnnxCausalLM` feeds them
        inputs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)[:, past:]
    inputs.update({name: torch.randn(batch, heads, past, head_dim, generator=generator) for name in graph.past_names})
    return inputs


def _decoder_axes(graph) -> dict:
    axes = {"input_ids": {0: "batch_size", 1: "sequence_length"}, "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
            "position_ids": {0: "batch_size", 1: "sequence_length"}, "logits": {0: "batch_size"}}
    axes.update({name: {0: "batch_size", 2: "past_sequence_length"} for name in graph.past_names})
    axes.update({name: {0: "batch_size", 2: "total_sequence_length"} for name in graph.output_names[1:]})
    return {name: axis for name, axis in axes.items() if name in graph.input_names or name in graph.output_names}


def check_lm_export(
    model_name_or_path: str, onnx_dir: str | Path, prompts: list[str], max_new_tokens: int = 32
) -> dict[str, float]:
    """Compare each ONNX graph of the export (fp32, int8, int8_static) with the PyTorch model on `prompts`.

    Per graph: `max_abs_logit_diff_*` (last-position logits after each prompt), `greedy_token_match_*` (share
    of the `max_new_tokens` greedy tokens, over all prompts, equal to transformers' greedy `generate`) and
    `batched_token_match_*` (share of those tokens that stay the same when the prompts, cut to mixed lengths,
    are decoded in one padded batch instead of one by one: 1.0 for a graph the server may batch).
    """
    import torch
    from transformers import AutoModelForCausalLM

    from pocketlm.hub import resolve

    model = AutoModelForCausalLM.from_pretrained(resolve(model_name_or_path)).eval()
    metrics: dict[str, float] = {}
    params = SamplingParams(max_new_tokens=max_new_tokens, stop_at_eos=False)
    references: dict[str, tuple] = {}
    """Per prompt, PyTorch's last-position logits and greedy tokens: the same for every graph, computed once."""
    for precision in LM_PRECISIONS:
        try:
            lm = OnnxCausalLM(onnx_dir, precision=precision)
        except FileNotFoundError:  # an export without this graph (--quantize false)
            continue
        label = precision.replace("-", "_")
        max_diff, matched, total = 0.0, 0, 0
        for text in prompts:
            ids = lm.encode(text)
            if text not in references:
                with torch.no_grad():
                    input_ids = torch.tensor([ids])
                    references[text] = (model(input_ids).logits[0, -1].numpy(), model.generate(
                        input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                        max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, pad_token_id=lm.pad_token_id,
                    )[0, len(ids):].tolist())
            torch_logits, reference = references[text]
            max_diff = max(max_diff, float(abs(lm.prefill([ids])[0][0] - torch_logits).max()))
            ours = lm.generate_ids([ids], params)[0]
            matched += sum(a == b for a, b in zip(ours, reference))
            total += len(reference)
        metrics[f"max_abs_logit_diff_{label}"] = max_diff
        metrics[f"greedy_token_match_{label}"] = matched / max(total, 1)
        metrics[f"batched_token_match_{label}"] = batched_token_match(lm, prompts, params)
    return metrics


def batched_token_match(lm: OnnxCausalLM, texts: list[str], params: SamplingParams) -> float:
    """Share of greedy tokens that are the same when the prompts (cut to lengths from 8 up, so the batch mixes
    padding) are decoded together in one batch as when each is decoded alone."""
    prompts = [lm.encode(text)[: 8 + 6 * i] for i, text in enumerate(texts)]
    alone = [lm.generate_ids([prompt], params)[0] for prompt in prompts]
    together = lm.generate_ids(prompts, params)
    pairs = [(a, b) for one, batched in zip(alone, together, strict=True) for a, b in zip(one, batched, strict=True)]
    return sum(a == b for a, b in pairs) / max(len(pairs), 1)


def _graph_file(export_dir: Path, precision: str) -> Path | None:
    """The export's graph for `precision` (`lm_graph_file`), or None when it has none (`--quantize false`)."""
    try:
        return lm_graph_file(export_dir, precision)
    except FileNotFoundError:
        return None


def file_size_mb(path: str | Path) -> float:
    return Path(path).stat().st_size / 2**20


def time_generations(onnx_dir: str | Path, precisions: list[str], prompt_tokens: int = 50, new_tokens: int = 32,
                     runs: int = 20, threads: int | None = None) -> dict[str, float]:
    """Median milliseconds per graph to continue a `prompt_tokens` prompt by `new_tokens` greedy tokens, the
    graphs taking turns run by run (so a change in the machine's load falls on all of them alike)."""
    import statistics
    import time

    from pocketlm.inference.batching import corpus_prompts

    lms = {precision: OnnxCausalLM(onnx_dir, precision=precision, intra_op_num_threads=threads) for precision in precisions}
    prompt = corpus_prompts(next(iter(lms.values())), 1, prompt_tokens)[0]
    params = SamplingParams(max_new_tokens=new_tokens, stop_at_eos=False)
    seconds: dict[str, list[float]] = {precision: [] for precision in lms}
    for run in range(runs + 1):  # run 0 warms up
        for precision, lm in lms.items():
            started = time.perf_counter()
            lm.generate_ids([prompt], params)
            if run:
                seconds[precision].append(time.perf_counter() - started)
    return {precision: 1000 * statistics.median(times) for precision, times in seconds.items()}


def publish_lm_onnx(
    model_name_or_path: str,
    repo_id: str,
    *,
    quantize: bool = True,
    check_prompts: int = 8,
    latency_runs: int = 20,
    push_to_hub: bool = False,
    token: str | None = None,
) -> Path:
    """Export, check against PyTorch, time, and publish the LM's ONNX export with a model card."""
    import tempfile

    from pocketlm.benchmarking import machine_description
    from pocketlm.hub import ModelCardInfo, publish
    from pocketlm.inference.batching import corpus_texts

    with tempfile.TemporaryDirectory(prefix="lm-onnx-") as scratch:
        export_dir = export_causal_lm(model_name_or_path, Path(scratch) / "onnx", quantize=quantize)
        texts = corpus_texts(check_prompts, max_chars=300)
        metrics = check_lm_export(model_name_or_path, export_dir, texts)
        graphs = {precision: _graph_file(export_dir, precision) for precision in LM_PRECISIONS}
        graphs = {precision: file for precision, file in graphs.items() if file is not None}
        for precision, file in graphs.items():
            metrics[f"size_mb_{precision.replace('-', '_')}"] = file_size_mb(file)
        if latency_runs:
            for precision, ms in time_generations(export_dir, list(graphs), runs=latency_runs).items():
                metrics[f"latency_ms_p50_{precision.replace('-', '_')}"] = ms
        card = ModelCardInfo(
            title=f"{repo_id} — ONNX export with KV cache",
            summary=(
                f"`{model_name_or_path}` exported to ONNX (`{TASK}`: the graph takes and returns the "
                "key/value cache, so each generated token costs one short step), plus two int8 twins: dynamically "
                "quantised (`model_quantized.onnx`; its tokens change when prompts share a batch) and statically "
                "quantised (`model_static_quantized.onnx`; batch-stable, so the server may batch it). Served torch-free by `pocketlm.serving` with onnxruntime, "
                "`tokenizers` and numpy."
            ),
            how_to_load=(
                "from pocketlm.hub import resolve\n"
                "from pocketlm.inference.onnx_lm import OnnxCausalLM, SamplingParams\n\n"
                f"lm = OnnxCausalLM(resolve({repo_id!r}))  # precision='int8' or 'int8-static' for an int8 graph\n"
                "ids = lm.generate_ids([lm.encode('The history of the city')], SamplingParams(max_new_tokens=32))[0]\n"
                "print(lm.decode(ids))"
            ),
            pipeline_tag="text-generation",
            eval_dataset="Salesforce/wikitext",
            eval_dataset_name="WikiText-2 (article openings)",
            eval_split="validation",
            metrics=metrics,
            datasets=["Salesforce/wikitext"],
            base_model=model_name_or_path if not Path(model_name_or_path).exists() else None,
            library_name="onnx",
            tags=["onnx", "onnxruntime", "int8", "kv-cache"],
            sections={
                "What the metrics mean": (
                    f"`max_abs_logit_diff_*`: largest difference between ONNX and PyTorch next-token logits after "
                    f"{len(texts)} WikiText-2 prompts. `greedy_token_match_*`: share of 32 greedy tokens per prompt "
                    "equal to transformers' `generate`. `batched_token_match_*`: share of those tokens unchanged when "
                    "the prompts, cut to mixed lengths, are decoded in one padded batch rather than alone (1.0: safe to "
                    "batch). `latency_ms_p50_*`: median time for a 50-token prompt plus 32 new tokens, batch 1, the "
                    f"graphs taking turns, on {machine_description()}."
                ),
            },
        )
        return publish(repo_id, lambda folder: _copy_export(export_dir, folder), card, push_to_hub=push_to_hub, token=token)


def _copy_export(export_dir: Path, folder: Path) -> None:
    import shutil

    shutil.copytree(export_dir, folder, dirs_exist_ok=True)
