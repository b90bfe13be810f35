"""QA latency: PyTorch CPU vs ONNX Runtime fp32 vs ONNX Runtime int8 on the fine-tuned MiniLM.

    python benchmarks/qa_latency.py          # writes benchmarks/results/qa_latency/

Each runtime answers the same `--requests` validation questions one at a time (batch 1, end to end:
tokenise, model, span selection) after `--warmup` untimed requests, with the same intra-op thread count, the
runtimes taking turns in blocks of 10 requests (the host's speed drifts: `time_interleaved`); p50/p95 in ms
(`pocketlm.benchmarking.latency_summary`), model file size in MB, and
EM/F1 at batch 1 on `--eval_samples` validation questions (the same for all).
The fp32 row runs the export's fused graph (`model_optimized.onnx`, `pocketlm.inference.qa_onnx_export.fuse_encoder`).
Three more rows (skipped with `--no_variants`) show what each step buys: the unfused `model.onnx`, and the same fused
graph quantised with the other treatments of the feed-forward outputs (`quantize_encoder_int8`): left in fp32
(accurate, slower) and quantised without smoothing (fast, less accurate).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from pocketlm import MINILM_SQUAD, MINILM_SQUAD_ONNX
from pocketlm.cli import run

BACKEND_LABELS = {"pytorch": "PyTorch fp32", "onnxruntime-fp32": "ONNX Runtime fp32 (fused)", "onnxruntime-int8": "ONNX Runtime int8 (published: smoothed)"}
UNFUSED_LABEL = "ONNX Runtime fp32, unfused export"
ALTERNATIVE_RECIPES = {"fp32": "ONNX Runtime int8, FFN outputs fp32", "int8": "ONNX Runtime int8, FFN outputs unsmoothed"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MINILM_SQUAD, help="PyTorch QA checkpoint (default: %(default)s)")
    parser.add_argument("--onnx_model", default=MINILM_SQUAD_ONNX,
                        help="its ONNX export; a PyTorch checkpoint is exported first (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=100, help="timed requests per runtime (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed requests first (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads, the same for every runtime (default: %(default)s)")
    parser.add_argument("--eval_samples", type=int, default=1000, help="validation questions for EM/F1; 0 skips (default: %(default)s)")
    parser.add_argument("--no_variants", action="store_true",
                        help="skip the three extra rows (unfused fp32 export; int8 with feed-forward outputs left fp32 / unsmoothed)")
    parser.add_argument("--output_dir", type=Path, default=None, help="default: benchmarks/results/qa_latency")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.warmup < 0 or args.threads < 1 or args.eval_samples < 0:
        parser.error("--requests and --threads must be positive, --warmup and --eval_samples not negative")

    from pocketlm.data import load_squad
    from pocketlm.hub import resolve
    from pocketlm.benchmarking import latency_summary, markdown_table, time_interleaved, write_results
    from pocketlm.inference.qa_onnx_export import quantize_encoder_int8
    from pocketlm.inference.qa_engine import FP32_FILE, OPTIMIZED_FILE, evaluate_squad
    from pocketlm.inference.qa_loading import BACKENDS, load_question_answerer, onnx_folder

    validation = load_squad("validation").to_list()
    # Requests: one question per paragraph, so that the contexts (and their lengths) vary like real traffic.
    seen, requests = set(), []
    for record in validation:
        if record["context"] not in seen:
            seen.add(record["context"])
            requests.append(record)
    requests = requests[: args.requests]
    onnx_dir = onnx_folder(args.onnx_model)
    pytorch_bytes = sum(p.stat().st_size for p in Path(resolve(args.model)).glob("*.safetensors"))
    # (row key, label, model, the loader backend that runs it)
    runs = [(backend, BACKEND_LABELS[backend], args.model if backend == "pytorch" else str(onnx_dir), backend) for backend in BACKENDS]
    scratch = tempfile.TemporaryDirectory()
    if not args.no_variants:
        fused = onnx_dir / OPTIMIZED_FILE
        if fused.is_file():
            # What the fusions buy: the export before them (a folder without the fused graph loads model.onnx)
            unfused = _export_copy(onnx_dir, Path(scratch.name) / "unfused", FP32_FILE)
            runs.append(("onnxruntime-fp32-unfused", UNFUSED_LABEL, str(unfused), "onnxruntime-fp32"))
        # The other two ways to treat the feed-forward outputs, from the same fp32 graph: what smoothing buys.
        for feed_forward, label in ALTERNATIVE_RECIPES.items():
            variant = _export_copy(onnx_dir, Path(scratch.name) / feed_forward, OPTIMIZED_FILE if fused.is_file() else FP32_FILE)
            quantize_encoder_int8(variant, feed_forward=feed_forward)
            runs.append((f"onnxruntime-int8-ffn-{feed_forward}", label, str(variant), "onnxruntime-int8"))
    answerers = {backend: load_question_answerer(model, loader, threads=args.threads, batch_size=1) for backend, _, model, loader in runs}
    print(f"{len(answerers)} runtimes, taking turns: {args.requests} requests after {args.warmup} warm-up", flush=True)
    timings = time_interleaved({backend: (lambda r, a=answerer: a.answer(r["question"], r["context"]))
                                for backend, answerer in answerers.items()}, requests, args.warmup)
    rows = []
    for backend, label, _, _ in runs:
        # the bytes of what each runtime runs: the checkpoint's safetensors, or the ONNX graph its answerer loaded
        size = pytorch_bytes if backend == "pytorch" else answerers[backend].model_path.stat().st_size
        row = {"backend": backend, "runtime": label, **latency_summary(timings[backend]), "size_mb": round(size / 2**20, 1)}
        if args.eval_samples:
            # batch 1, as timed and as the server answers: dynamic int8 scores move by ~1 point with batch
            # composition (padded positions enter the per-tensor activation ranges); fp32 does not move
            scores = evaluate_squad(answerers[backend], validation[: args.eval_samples])
            row.update(exact_match=round(scores["exact_match"], 2), f1=round(scores["f1"], 2))
        rows.append(row)
    scratch.cleanup()
    baseline = rows[0]["p50_ms"]
    for row in rows:
        row["speedup_p50"] = round(baseline / row["p50_ms"], 2)

    columns = [("runtime", "runtime"), ("p50_ms", "p50 ms"), ("p95_ms", "p95 ms"), ("speedup_p50", "speed-up (p50)"), ("size_mb", "size MB")]
    if args.eval_samples:
        columns += [("exact_match", "EM"), ("f1", "F1")]
    table = markdown_table(rows, columns, ".2f")
    settings = {
        "model": args.model, "onnx_model": str(args.onnx_model), "requests": args.requests, "warmup": args.warmup,
        "threads": args.threads, "batch_size": 1, "eval_samples": args.eval_samples,
    }
    markdown = (f"# QA latency: {args.requests} SQuAD validation questions per runtime, batch 1, {args.threads} threads\n\n"
                f"{table}")
    folder = write_results("qa_latency", {"settings": settings, "rows": rows}, markdown, figures=figures(rows),
                           plot=lambda figure: _plot(rows, args, figure), output_dir=args.output_dir)
    print(table)
    print(f"results in {folder}")
    return 0


def _export_copy(source: Path, folder: Path, graph: str) -> Path:
    """`folder` with `source`'s config and tokenizer files and its one graph `graph` (linked, not copied)."""
    folder.mkdir()
    for file in source.iterdir():
        if file.is_file() and file.suffix != ".onnx":
            shutil.copy2(file, folder / file.name)
    (folder / graph).symlink_to(source / graph)
    return folder


def figures(rows: list[dict]) -> dict[str, str]:
    """One line per runtime: latency, speed-up over PyTorch, size and (when measured) EM / F1."""
    lines = {}
    for row in rows:
        quality = f"; EM {row['exact_match']:.2f}, F1 {row['f1']:.2f}" if "f1" in row else ""
        lines[row["runtime"]] = (f"p50 {row['p50_ms']:.2f} ms, p95 {row['p95_ms']:.2f} ms, {row['speedup_p50']:.2f}× PyTorch (p50), "
                                 f"{row['size_mb']:.1f} MB{quality}")
    return lines


def _plot(rows: list[dict], args, figure) -> None:
    from pocketlm.benchmarking import paired_bars

    figure.set_size_inches(7, 4)
    paired_bars(
        figure.add_subplot(), [row["runtime"] for row in rows], {"p50": [row["p50_ms"] for row in rows], "p95": [row["p95_ms"] for row in rows]},
        "latency per question (ms)", f"QA latency, batch 1, {args.threads} threads, {args.requests} requests",
        annotations=[f"{row['speedup_p50']:.2f}x" for row in rows],
    )


if __name__ == "__main__":
    run(main)
