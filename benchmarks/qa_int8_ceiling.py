"""How fast can int8 QA get on this CPU? The encoder's matrix products alone, against the whole model call.

    python benchmarks/qa_int8_ceiling.py      # writes benchmarks/results/qa_int8_ceiling/

The QA latency target asks ONNX Runtime int8 for 3× PyTorch fp32. Most of an encoder's time is its matrix
products, so this times them alone, at the model's own shapes (every layer's QKV, output, feed-forward up and
down projections for one `--tokens`-token window at batch 1), in one graph per runtime: PyTorch fp32 (`x @ w`),
ONNX Runtime fp32 and ONNX Runtime dynamic int8 (the same `quantize_dynamic` settings as the published graph:
int8 weights per channel, activations quantised at run time). Each product reads its own input, so every
dynamic quantisation of an activation is paid, as in the model. Next to them, the whole model call of each
runtime on a window of the same length. PyTorch's whole call divided by int8's matrix products alone is the
ceiling of the int8 speed-up with everything else (attention softmax, GELU, LayerNorm, tokenising) free.
All runtimes take turns in blocks (`time_interleaved`), with the same intra-op thread count.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from pocketlm import MINILM_SQUAD, MINILM_SQUAD_ONNX
from pocketlm.cli import run

LABELS = {"pytorch": "PyTorch fp32", "onnxruntime-fp32": "ONNX Runtime fp32 (fused)", "onnxruntime-int8": "ONNX Runtime int8 (published)"}


def projection_shapes(config: dict) -> list[tuple[int, int]]:
    """(in, out) of every matrix product with a weight in a BERT-style encoder, layer after layer."""
    hidden = config.get("hidden_size") or config["dim"]
    inner = config.get("intermediate_size") or config["hidden_dim"]
    layers = config.get("num_hidden_layers") or config["n_layers"]
    return [(hidden, 3 * hidden), (hidden, hidden), (hidden, inner), (inner, hidden)] * layers


def projections_graph(weights: list[np.ndarray], path: Path) -> Path:
    """One ONNX graph of independent MatMuls `x_i @ weights[i]` (one input per product)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inputs, outputs, initializers = [], [], [], []
    for i, weight in enumerate(weights):
        fan_in, fan_out = weight.shape
        nodes.append(helper.make_node("MatMul", [f"x{i}", f"w{i}"], [f"y{i}"]))
        inputs.append(helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, ["tokens", fan_in]))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["tokens", fan_out]))
        initializers.append(numpy_helper.from_array(weight, f"w{i}"))
    graph = helper.make_graph(nodes, "projections", inputs, outputs, initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MINILM_SQUAD, help="PyTorch QA checkpoint (default: %(default)s)")
    parser.add_argument("--onnx_model", default=MINILM_SQUAD_ONNX, help="its ONNX export (default: %(default)s)")
    parser.add_argument("--tokens", type=int, default=156,
                        help="window length; qa_latency.py's 100 requests make 109 windows of 156 tokens on average (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads, the same for every runtime (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=20, help="blocks of 10 timed calls per runtime and measure (default: %(default)s)")
    parser.add_argument("--output_dir", type=Path, default=None, help="default: benchmarks/results/qa_int8_ceiling")
    args = parser.parse_args(argv)
    if args.tokens < 8 or args.threads < 1 or args.rounds < 1:
        parser.error("--tokens must be at least 8, --threads and --rounds positive")

    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from pocketlm.benchmarking import latency_summary, markdown_table, time_interleaved, write_results
    from pocketlm.inference.onnx_lm import session_options
    from pocketlm.inference.qa_loading import BACKENDS, load_question_answerer, onnx_folder

    onnx_dir = onnx_folder(args.onnx_model)
    config = json.loads((onnx_dir / "config.json").read_text())
    shapes = projection_shapes(config)
    rng = np.random.default_rng(0)

    # the whole model on one window: random ids, a question segment of 16 tokens, no padding (batch 1); each
    # runtime as the QA path loads it (the same graphs, sessions and thread settings as qa_latency.py)
    window = {
        "input_ids": rng.integers(1000, config["vocab_size"], (1, args.tokens)).astype(np.int64),
        "attention_mask": np.ones((1, args.tokens), np.int64),
        "token_type_ids": (np.arange(args.tokens) >= 16).astype(np.int64)[None],
    }
    answerers = {runtime: load_question_answerer(args.model if runtime == "pytorch" else str(onnx_dir), runtime, threads=args.threads)
                 for runtime in BACKENDS}  # sets torch's threads too
    torch_window = {name: torch.from_numpy(window[name]) for name in answerers["pytorch"].input_names}

    # the matrix products alone, the same shapes and weights in every runtime
    scratch = tempfile.TemporaryDirectory()
    weights = [(rng.standard_normal(shape) * 0.05).astype(np.float32) for shape in shapes]
    feeds = {f"x{i}": rng.standard_normal((args.tokens, fan_in)).astype(np.float32) for i, (fan_in, _) in enumerate(shapes)}
    fp32_graph = projections_graph(weights, Path(scratch.name) / "projections.onnx")
    int8_graph = Path(scratch.name) / "projections_int8.onnx"
    quantize_dynamic(str(fp32_graph), str(int8_graph), weight_type=QuantType.QInt8, per_channel=True)
    # plain sessions, not `cpu_session`: these throwaway graphs must not enter its on-disk cache; and without
    # spin-waiting: their idle threads would otherwise spin through PyTorch's turns (they made its calls 3-4×
    # slower than PyTorch alone)
    gemm_sessions = {runtime: ort.InferenceSession(str(graph), session_options(args.threads, spinning=False), providers=["CPUExecutionProvider"])
                     for runtime, graph in (("onnxruntime-fp32", fp32_graph), ("onnxruntime-int8", int8_graph))}
    torch_pairs = [(torch.from_numpy(feeds[f"x{i}"]), torch.from_numpy(w)) for i, w in enumerate(weights)]

    @torch.inference_mode()
    def torch_model_call(_):
        answerers["pytorch"].model(**torch_window)

    @torch.inference_mode()
    def torch_gemms(_):
        for x, w in torch_pairs:
            x @ w

    calls = {("pytorch", "model"): torch_model_call, ("pytorch", "gemms"): torch_gemms}
    for runtime in ("onnxruntime-fp32", "onnxruntime-int8"):
        model_feed = {name: window[name] for name in answerers[runtime].input_names}
        calls[(runtime, "model")] = lambda _, a=answerers[runtime], f=model_feed: a.logits(f)
        calls[(runtime, "gemms")] = lambda _, s=gemm_sessions[runtime]: s.run(None, feeds)
    print(f"{len(calls)} measures taking turns, {args.rounds} blocks of 10 each, {args.tokens}-token window", flush=True)
    timings = time_interleaved({f"{r}|{m}": call for (r, m), call in calls.items()}, list(range(10 * args.rounds)), warmup=10)
    scratch.cleanup()

    p50 = {key: latency_summary(values)["p50_ms"] for key, values in timings.items()}
    torch_model_ms = p50["pytorch|model"]
    rows = []
    for runtime in BACKENDS:
        model_ms, gemm_ms = p50[f"{runtime}|model"], p50[f"{runtime}|gemms"]
        rows.append({
            "runtime": LABELS[runtime], "model_p50_ms": model_ms, "gemms_p50_ms": gemm_ms,
            "gemm_share": round(min(gemm_ms / model_ms, 1.0), 2),
            "model_speedup": round(torch_model_ms / model_ms, 2),
            "gemm_speedup": round(p50["pytorch|gemms"] / gemm_ms, 2),
            "ceiling": round(torch_model_ms / gemm_ms, 2),
        })
    columns = [("runtime", "runtime"), ("model_p50_ms", "model call p50 ms"), ("gemms_p50_ms", "its matrix products alone, p50 ms"),
               ("model_speedup", "model × PyTorch"), ("gemm_speedup", "matrix products × PyTorch's"),
               ("ceiling", "ceiling: PyTorch model ÷ these products")]
    table = markdown_table(rows, columns, ".2f")
    settings = {"model": args.model, "onnx_model": str(args.onnx_model), "tokens": args.tokens, "threads": args.threads,
                "rounds": args.rounds, "projections": len(shapes)}
    markdown = f"# QA int8 ceiling: {args.tokens}-token window, batch 1, {args.threads} threads\n\n{table}"
    figures = {row["runtime"]: (f"model call {row['model_p50_ms']:.2f} ms ({row['model_speedup']:.2f}× PyTorch), its matrix "
                                f"products alone {row['gemms_p50_ms']:.2f} ms; ceiling {row['ceiling']:.2f}×") for row in rows}
    folder = write_results("qa_int8_ceiling", {"settings": settings, "rows": rows}, markdown, figures=figures,
                           plot=lambda figure: _plot(rows, args, figure), output_dir=args.output_dir)
    print(table)
    print(f"results in {folder}")
    return 0


def _plot(rows: list[dict], args, figure) -> None:
    from pocketlm.benchmarking import paired_bars

    figure.set_size_inches(7, 4)
    paired_bars(
        figure.add_subplot(), [r["runtime"] for r in rows],
        {"whole model call": [r["model_p50_ms"] for r in rows], "its matrix products alone": [r["gemms_p50_ms"] for r in rows]},
        "ms per window (p50)", f"QA encoder, {args.tokens}-token window, batch 1, {args.threads} threads",
        reference=(rows[0]["model_p50_ms"] / 3, "3× faster than PyTorch"),
    )


if __name__ == "__main__":
    run(main)
