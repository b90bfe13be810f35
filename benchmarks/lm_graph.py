"""The LM's decode step as ONNX's attention operators against `torch.onnx`'s trace, side by side.

    python benchmarks/lm_graph.py            # pocketlm/tiny-lm

Exports the LM twice, fp32: as `pocketlm.inference.lm_export` writes a Llama (`RMSNormalization`,
`RotaryEmbedding`, `Attention`: `pocketlm/inference/llama_onnx.py`) and traced by `torch.onnx` (transformers'
eager Llama). Both graphs load as the server loads them (`OnnxCausalLM`, ONNX Runtime's full optimisations,
`--threads` intra-op threads) and take turns, in blocks of calls, on the steps a server runs: a cached decode step at
batch 1 and at batch 8 (past 80 tokens), the batch-8 prefill of 50-token prompts, and a whole batch-1
generation (50-token prompt, 32 new tokens). Per step: the median milliseconds of each graph, the graphs' node
counts after ONNX Runtime's optimisations, and whether their greedy tokens agree on 8 WikiText-2 prompts.
Writes benchmarks/results/lm_graph/lm_graph.{json,md,png}.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np

from pocketlm import TINY_LM
from pocketlm.benchmarking import markdown_table, paired_bars, time_interleaved, write_results
from pocketlm.cli import run
from pocketlm.inference.batching import corpus_prompts
from pocketlm.inference.lm_export import export_causal_lm
from pocketlm.inference.onnx_lm import OnnxCausalLM, SamplingParams
from pocketlm.settings import REPO_ROOT

GRAPHS = ("onnx_attention_ops", "torch_onnx_trace")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=TINY_LM, help="Hub id or folder of a Llama-architecture causal LM")
    parser.add_argument("--runs", type=int, default=200, help="timed calls per graph and step (generations: a tenth)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--output_dir", default=str(REPO_ROOT / "benchmarks" / "results" / "lm_graph"))
    args = parser.parse_args(argv)
    if args.runs < 10:
        parser.error(f"--runs must be at least 10, got {args.runs}")
    return args


def step_feed(lm: OnnxCausalLM, batch: int, new: int, past: int) -> dict[str, np.ndarray]:
    """Inputs of one graph call: `new` tokens per row after a cache of `past` (random keys and values)."""
    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(0, 100, (batch, new)), "attention_mask": np.ones((batch, past + new), np.int64),
            "position_ids": np.tile(np.arange(past, past + new), (batch, 1))}
    for i in range(lm.num_layers):
        for kind in ("key", "value"):
            feed[f"past_key_values.{i}.{kind}"] = rng.standard_normal((batch, lm.kv_heads, past, lm.head_dim), dtype=np.float32)
    return feed


def optimised_nodes(lm: OnnxCausalLM) -> int:
    """Nodes of the graph a session of `lm` runs: ONNX Runtime's optimisations applied, written to a scratch file."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as scratch:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(scratch) / "optimised.onnx")
        options.log_severity_level = 3  # not the warning that an optimised copy is machine-specific: it is read once
        ort.InferenceSession(str(lm.onnx_path), options, providers=["CPUExecutionProvider"])
        return len(onnx.load(options.optimized_model_filepath, load_external_data=False).graph.node)


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lm-graph-") as scratch:
        lms = {}
        for graph in GRAPHS:
            folder = export_causal_lm(args.model, Path(scratch) / graph, quantize=False, traced=graph == "torch_onnx_trace")
            lms[graph] = OnnxCausalLM(folder, intra_op_num_threads=args.threads)
        nodes = {graph: optimised_nodes(lm) for graph, lm in lms.items()}
        any_lm = lms[GRAPHS[0]]
        prompt = corpus_prompts(any_lm, 1, 50)[0]
        generation = SamplingParams(max_new_tokens=32, stop_at_eos=False)
        steps = {  # name → (calls, how one call runs on an lm)
            "decode step, batch 1 (past 80)": (args.runs, lambda lm, f=step_feed(any_lm, 1, 1, 80): lm.session.run(None, f)),
            "decode step, batch 8 (past 80)": (args.runs, lambda lm, f=step_feed(any_lm, 8, 1, 80): lm.session.run(None, f)),
            "prefill, batch 8 × 50 tokens": (args.runs // 10, lambda lm, f=step_feed(any_lm, 8, 50, 0): lm.session.run(None, f)),
            "generation, 50 + 32 tokens, batch 1": (args.runs // 10, lambda lm: lm.generate_ids([prompt], generation)),
        }
        rows = []
        for step, (calls, call) in steps.items():
            # in blocks, with a pause at each switch: a session's spinning threads would slow the other's next call
            timings = time_interleaved({graph: lambda _, lm=lm: call(lm) for graph, lm in lms.items()}, range(calls),
                                       warmup=2, block=max(calls // 10, 2))
            ms = {graph: statistics.median(values) for graph, values in timings.items()}
            rows.append({"step": step, **{f"{graph}_ms": value for graph, value in ms.items()},
                         "speedup": ms["torch_onnx_trace"] / ms["onnx_attention_ops"]})
            print(f"{step}: {ms['onnx_attention_ops']:.2f} ms vs traced {ms['torch_onnx_trace']:.2f} ms "
                  f"({rows[-1]['speedup']:.2f}×)", flush=True)
        prompts = corpus_prompts(any_lm, 8, [8 + 6 * i for i in range(8)])
        greedy = {graph: lm.generate_ids(prompts, generation) for graph, lm in lms.items()}
        pairs = [(a, b) for x, y in zip(*greedy.values()) for a, b in zip(x, y)]
        agreement = sum(a == b for a, b in pairs) / len(pairs)

    results = {"model": args.model, "threads": args.threads, "runs": args.runs, "nodes_after_ort_optimisation": nodes,
               "greedy_token_agreement": agreement, "steps": rows}
    table = markdown_table(rows, [("step", "step"), ("onnx_attention_ops_ms", "ONNX attention ops (ms)"),
                                  ("torch_onnx_trace_ms", "torch.onnx trace (ms)"), ("speedup", "× faster")])
    markdown = (f"# The LM's decode step: ONNX attention operators vs the torch.onnx trace\n\n{table}\n\n"
                f"Nodes after ONNX Runtime's optimisations: {nodes['onnx_attention_ops']} against "
                f"{nodes['torch_onnx_trace']}. Greedy tokens equal on 8 prompts × 32 tokens: {agreement:.0%}. "
                f"Medians of {args.runs} calls per decode step ({args.runs // 10} per prefill and generation), the "
                f"graphs taking turns in blocks, {args.threads} ONNX Runtime threads.")
    by_step = {row["step"]: row for row in rows}
    figures = {step.split(" (")[0]: f"{row['speedup']:.2f}× faster ({row['onnx_attention_ops_ms']:.2f} vs "
                                    f"{row['torch_onnx_trace_ms']:.2f} ms)" for step, row in by_step.items()}
    figures["graph nodes"] = f"{nodes['onnx_attention_ops']} vs {nodes['torch_onnx_trace']}"

    def plot(figure):
        axes = figure.add_subplot(1, 1, 1)
        paired_bars(axes, [row["step"].replace(", ", "\n", 1) for row in rows],
                    {"ONNX attention ops": [row["onnx_attention_ops_ms"] for row in rows],
                     "torch.onnx trace": [row["torch_onnx_trace_ms"] for row in rows]},
                    "median ms per call (log scale)", "The LM's graph, step by step (lower is faster)",
                    annotations=[f"{row['speedup']:.2f}×" for row in rows])
        axes.set_yscale("log")

    write_results("lm_graph", results, markdown, figures=figures, plot=plot, output_dir=args.output_dir)
    if agreement < 1:
        raise SystemExit(f"error: the two graphs' greedy tokens differ ({agreement:.0%} agree)")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
