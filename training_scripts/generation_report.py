"""Generation report: five sampled paragraphs from the published LM, their perplexity and distinct-2, and a
temperature × top-k sweep, written as Markdown (+ JSON) with a discussion of coherence against diversity.

    python training_scripts/generation_report.py                          # pocketlm/tiny-lm from the local hub
    python training_scripts/generation_report.py --model pocketlm/tiny-lm --temperatures 0.7,1.0,1.3 --top_ks 10,50,0
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pocketlm import TINY_LM
from pocketlm.cli import parse_args_with_presets, run


@dataclass
class ReportArguments:
    model: str = field(default=TINY_LM, metadata={"help": "hub id or folder of a causal LM"})
    output_dir: str | None = field(default=None, metadata={"help": "default: $POCKETLM_RUNS_DIR/generation_report"})
    min_new_tokens: int = 50
    max_new_tokens: int = 100
    top_k: int = 50
    temperatures: str = field(default="0.7,1.0,1.3", metadata={"help": "comma-separated temperatures for the sweep"})
    top_ks: str = field(default="10,50,0", metadata={"help": "comma-separated top-k values for the sweep (0 = none)"})
    validation_chunks: str | None = field(
        default=None, metadata={"help": "JSONL of held-out chunks for the human-text reference; default: the prepared corpus's"}
    )
    seed: int = 0


def _numbers(flag: str, value: str, kind):
    try:
        return [kind(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"error: --{flag} must be comma-separated numbers, got {value!r}") from None


def main() -> None:
    (args,) = parse_args_with_presets([ReportArguments], description=__doc__.splitlines()[0])
    temperatures, top_ks = _numbers("temperatures", args.temperatures, float), _numbers("top_ks", args.top_ks, int)
    if not 0 < args.min_new_tokens <= args.max_new_tokens:
        raise SystemExit("error: --min_new_tokens must be positive and at most --max_new_tokens")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pocketlm.data.corpus import default_prepared_dir, read_chunks_jsonl
    from pocketlm.benchmarking import machine_description
    from pocketlm.hub import resolve
    from pocketlm.io import atomic_write_text, write_json
    from pocketlm.settings import runs_dir
    from pocketlm.training.generation_analysis import generate_paragraphs, human_paragraphs, overall, render_report, sweep

    path = resolve(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    lengths = {"min_new_tokens": args.min_new_tokens, "max_new_tokens": args.max_new_tokens}
    paragraphs = generate_paragraphs(model, tokenizer, top_k=args.top_k, seed=args.seed, **lengths)
    rows = sweep(model, tokenizer, temperatures, top_ks, seed=args.seed, **lengths)
    chunks_file = Path(args.validation_chunks) if args.validation_chunks else default_prepared_dir() / "validation.jsonl"
    human = None
    if chunks_file.is_file():
        chunks = [row["input_ids"] for row in read_chunks_jsonl(chunks_file)]
        human = overall(human_paragraphs(model, tokenizer, chunks, length=(args.min_new_tokens + args.max_new_tokens) // 2))
    metrics_file = Path(path) / "metrics.json"
    validation_ppl = json.loads(metrics_file.read_text()).get("perplexity") if metrics_file.is_file() else None
    report = render_report(args.model, paragraphs, rows, human, validation_ppl, machine_description())
    output_dir = Path(args.output_dir) if args.output_dir else runs_dir() / "generation_report"
    write_json(output_dir / "report.json", {
        "model": args.model, "args": asdict(args), "paragraphs": [
            {"prompt": p.prompt, "text": p.text, "new_tokens": p.new_tokens, "ppl": p.ppl, "distinct_2": p.distinct_2}
            for p in paragraphs
        ],
        "overall": overall(paragraphs), "human": human, "validation_ppl": validation_ppl, "sweep": rows,
    })
    atomic_write_text(output_dir / "report.md", report)
    print(report)
    print(f"written to {output_dir / 'report.md'}")


if __name__ == "__main__":
    run(main)
