"""Score an extractive QA model on any SQuAD v1.1-format JSON file; print EM/F1 (official normalisation) as JSON.

    python training_scripts/evaluate_qa.py ../shared/data/squad-v1.1/validation.json --model pocketlm/minilm-squad
    python training_scripts/evaluate_qa.py FILE.json --model pocketlm/minilm-squad-onnx --onnx          # ONNX Runtime fp32
    python training_scripts/evaluate_qa.py FILE.json --model pocketlm/minilm-squad-onnx --onnx --int8   # dynamic int8

`--model` is a repo id (local hub folder first) or a path. With `--onnx` it may also name a PyTorch checkpoint:
it is exported to a temporary folder first.
"""

from __future__ import annotations

import argparse
import json

from pocketlm.cli import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", metavar="FILE.json", help="questions in SQuAD v1.1 JSON format (data[].paragraphs[].qas[])")
    parser.add_argument("--model", default="pocketlm/minilm-squad", help="QA model: repo id or path (default: %(default)s)")
    parser.add_argument("--onnx", action="store_true", help="run the ONNX export with ONNX Runtime instead of PyTorch")
    parser.add_argument("--int8", action="store_true", help="with --onnx: the dynamically quantised int8 model")
    parser.add_argument("--max_samples", type=int, default=None, help="score only the first N questions")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    parser.add_argument("--batch_size", type=int, default=32, help="windows per forward pass (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.int8 and not args.onnx:
        parser.error("--int8 needs --onnx (int8 is the quantised ONNX model)")
    if args.max_samples is not None and args.max_samples < 1:
        parser.error("--max_samples must be positive")
    if args.batch_size < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--batch_size and --threads must be positive")

    from pocketlm.data import read_squad_json
    from pocketlm.inference.qa_loading import load_question_answerer
    from pocketlm.inference.qa_engine import evaluate_squad

    records = read_squad_json(args.file)[: args.max_samples]
    if not records:
        parser.error(f"{args.file}: no questions")
    backend = "onnxruntime-int8" if args.int8 else "onnxruntime-fp32" if args.onnx else "pytorch"
    answerer = load_question_answerer(args.model, backend, threads=args.threads, batch_size=args.batch_size)
    scores = evaluate_squad(answerer, records)
    print(json.dumps({"model": args.model, "backend": backend, "file": args.file, **scores}, indent=2))
    return 0


if __name__ == "__main__":
    run(main)
