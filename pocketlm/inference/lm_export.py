"""Export a causal LM (pocketlm's tiny Llama, gpt2, any `AutoModelForCausalLM`) to ONNX with its KV cache.

optimum's exporter does the tracing (`task="text-generation-with-past"`: one graph that takes the past keys
and values and returns the present ones) and validates the graph against PyTorch; onnxruntime's dynamic
quantisation writes an int8 twin beside it. `check_lm_export` then measures what the model card states:
logit agreement and greedy agreement of the ONNX graphs with transformers' own `generate`.
"""

from __future__ import annotations

from pathlib import Path

from pocketlm.inference.onnx_lm import OnnxCausalLM, SamplingParams
from pocketlm.inference.qa_engine import FP32_FILE, INT8_FILE

TASK = "text-generation-with-past"


def export_causal_lm(model_name_or_path: str, output_dir: str | Path, *, quantize: bool = True) -> Path:
    """Write `model.onnx` (fp32, KV cache), optionally `model_quantized.onnx`, config and tokenizer files.

    The tokenizer goes along as `tokenizer.json`, which the `tokenizers` library reads without transformers.
    """
    from optimum.exporters.onnx import main_export

    from pocketlm.hub import resolve

    output_dir = Path(output_dir)
    source = resolve(model_name_or_path)
    main_export(source, output_dir, task=TASK, device="cpu", do_validation=True)
    keep_last_position_logits(output_dir / FP32_FILE)
    if not (output_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{source} has no fast tokenizer (tokenizer.json); the torch-free runtime needs one")
    if quantize:
        quantize_dynamic_int8(output_dir)
    return output_dir


def quantize_dynamic_int8(folder: str | Path) -> Path:
    """Quantise `<folder>/model.onnx` to `<folder>/model_quantized.onnx` with ONNX Runtime's dynamic int8 scheme
    as is, no fusions first: for graphs other than BERT-style encoders (the LM's decoder, which has no
    BERT attention pattern to fuse); the QA encoder is quantised by `pocketlm.inference.qa_onnx_export`."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    folder = Path(folder)
    # The AVX-512 VNNI preset: symmetric int8 weights, per channel (more accurate than per tensor, same speed),
    # no reduced range. The resulting graph (MatMulInteger / DynamicQuantizeLinear) runs on any CPU.
    config = AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True)
    quantizer = ORTQuantizer.from_pretrained(folder, file_name=FP32_FILE)
    quantizer.quantize(config, save_dir=folder, file_suffix="quantized")
    written = folder / INT8_FILE
    if not written.is_file():
        raise FileNotFoundError(f"the quantiser did not write {written}")
    return written


def keep_last_position_logits(onnx_path: str | Path) -> bool:
    """Make the graph compute logits for the last position only (transformers' `logits_to_keep=1`).

    Generation reads nothing else, but optimum exports with `logits_to_keep=0`: the prefill of a padded batch
    of 20 prompts × 67 tokens then multiplies all 1,340 hidden states by the 256 × 8,000 output matrix —
    about 40 % of the prefill's arithmetic, thrown away. A `Slice` of the final hidden states to their last
    position, inserted before that matmul, removes it. Returns False (graph unchanged) when the logits do not
    come from a matmul of (batch, sequence, hidden) states, e.g. a differently built export.
    """
    import onnx
    from onnx import TensorProto, helper

    onnx_path = Path(onnx_path)
    model = onnx.load(str(onnx_path))
    graph = model.graph
    index, head = next(((i, n) for i, n in enumerate(graph.node) if "logits" in n.output), (None, None))
    output = next(o for o in graph.output if o.name == "logits")
    if head is None or head.op_type != "MatMul" or len(output.type.tensor_type.shape.dim) != 3:
        return False
    constants = {"last_position_starts": -1, "last_position_ends": 2**63 - 1, "last_position_axes": 1}
    graph.initializer.extend(helper.make_tensor(name, TensorProto.INT64, [1], [value]) for name, value in constants.items())
    sliced = head.input[0] + "_last_position"
    graph.node.insert(index, helper.make_node("Slice", [head.input[0], *constants], [sliced], name="/keep_last_position_logits"))
    head.input[0] = sliced
    sequence_dim = output.type.tensor_type.shape.dim[1]
    sequence_dim.Clear()
    sequence_dim.dim_value = 1
    onnx.checker.check_model(model)
    onnx.save(model, str(onnx_path))
    return True


def check_lm_export(
    model_name_or_path: str, onnx_dir: str | Path, prompts: list[str], max_new_tokens: int = 32
) -> dict[str, float]:
    """Compare the ONNX graphs with the PyTorch model on `prompts`: logits and greedy continuations.

    Returns `max_abs_logit_diff_fp32` / `_int8` (last-position logits after each prompt) and
    `greedy_token_match_fp32` / `_int8` (fraction of the `max_new_tokens` greedy tokens, over all prompts,
    equal to transformers' greedy `generate`).
    """
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from pocketlm.hub import resolve

    model = AutoModelForCausalLM.from_pretrained(resolve(model_name_or_path)).eval()
    metrics: dict[str, float] = {}
    params = SamplingParams(max_new_tokens=max_new_tokens, stop_at_eos=False)
    for label, quantized in (("fp32", False), ("int8", True)):
        if not (Path(onnx_dir) / (INT8_FILE if quantized else FP32_FILE)).is_file():
            continue
        lm = OnnxCausalLM(onnx_dir, quantized=quantized)
        max_diff, matched, total = 0.0, 0, 0
        for text in prompts:
            ids = lm.encode(text)
            feed = {"input_ids": np.array([ids]), "attention_mask": np.ones((1, len(ids)), np.int64),
                    **lm._empty_cache(1)}
            if lm.uses_position_ids:
                feed["position_ids"] = np.arange(len(ids))[None]
            onnx_logits = lm.session.run(["logits"], feed)[0][0, -1]
            with torch.no_grad():
                input_ids = torch.tensor([ids])
                torch_logits = model(input_ids).logits[0, -1].numpy()
                reference = model.generate(
                    input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                    max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, pad_token_id=lm.pad_token_id,
                )[0, len(ids):].tolist()
            max_diff = max(max_diff, float(np.abs(onnx_logits - torch_logits).max()))
            ours = lm.generate_ids([ids], params)[0]
            matched += sum(a == b for a, b in zip(ours, reference))
            total += len(reference)
        metrics[f"max_abs_logit_diff_{label}"] = max_diff
        metrics[f"greedy_token_match_{label}"] = matched / max(total, 1)
    return metrics


def file_size_mb(path: str | Path) -> float:
    return Path(path).stat().st_size / 2**20


def time_generation(onnx_dir: str | Path, quantized: bool, prompt_tokens: int = 50, new_tokens: int = 32,
                    runs: int = 20, threads: int | None = None) -> float:
    """Median milliseconds to continue a `prompt_tokens` prompt by `new_tokens` greedy tokens (after one warm-up)."""
    from pocketlm.benchmarking import latency_summary, time_requests
    from pocketlm.inference.batching import corpus_prompts

    lm = OnnxCausalLM(onnx_dir, quantized=quantized, intra_op_num_threads=threads)
    prompt = corpus_prompts(lm, 1, prompt_tokens)[0]
    params = SamplingParams(max_new_tokens=new_tokens, stop_at_eos=False)
    return latency_summary(time_requests(lambda _: lm.generate_ids([prompt], params), [None] * runs, warmup=1))["p50_ms"]


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

    from pocketlm.hub import ModelCardInfo, machine_description, publish
    from pocketlm.inference.batching import corpus_texts

    with tempfile.TemporaryDirectory(prefix="lm-onnx-") as scratch:
        export_dir = export_causal_lm(model_name_or_path, Path(scratch) / "onnx", quantize=quantize)
        texts = corpus_texts(check_prompts, max_chars=300)
        metrics = check_lm_export(model_name_or_path, export_dir, texts)
        for label, file in (("fp32", FP32_FILE), ("int8", INT8_FILE)):
            if (export_dir / file).is_file():
                metrics[f"size_mb_{label}"] = file_size_mb(export_dir / file)
                if latency_runs:
                    metrics[f"latency_ms_p50_{label}"] = time_generation(export_dir, label == "int8", runs=latency_runs)
        card = ModelCardInfo(
            title=f"{repo_id} — ONNX export with KV cache",
            summary=(
                f"`{model_name_or_path}` exported to ONNX by optimum (`{TASK}`: the graph takes and returns the "
                "key/value cache, so each generated token costs one short step), plus a dynamically quantised int8 "
                "twin (`model_quantized.onnx`). Served torch-free by `pocketlm.serving` with onnxruntime, "
                "`tokenizers` and numpy."
            ),
            how_to_load=(
                "from pocketlm.hub import resolve\n"
                "from pocketlm.inference.onnx_lm import OnnxCausalLM, SamplingParams\n\n"
                f"lm = OnnxCausalLM(resolve({repo_id!r}))  # quantized=True for the int8 graph\n"
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
                    "equal to transformers' `generate`. `latency_ms_p50_*`: median time for a 50-token prompt plus 32 "
                    f"new tokens, batch 1, on {machine_description()}."
                ),
            },
        )
        return publish(repo_id, lambda folder: _copy_export(export_dir, folder), card, push_to_hub=push_to_hub, token=token)


def _copy_export(export_dir: Path, folder: Path) -> None:
    import shutil

    shutil.copytree(export_dir, folder, dirs_exist_ok=True)
