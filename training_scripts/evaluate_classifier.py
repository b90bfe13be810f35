"""Evaluate a published classifier on a split: classification report (Markdown + JSON) and confusion-matrix PNG.

    python training_scripts/evaluate_classifier.py --model pocketlm/minilm-sst2-peft --split test

The data set defaults to the one the model was trained on (recorded in its `pocketlm_classifier.json`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pocketlm import MINILM_SST2_PEFT
from pocketlm.cli import parse_args_with_presets, run
from pocketlm.settings import runs_dir


@dataclass
class EvaluationArguments:
    model: str = field(default=MINILM_SST2_PEFT, metadata={"help": "a published classifier: pocketlm hub id or folder"})
    split: str = field(default="test", metadata={"help": "train, validation or test"})
    dataset: str | None = field(default=None, metadata={"help": "data set (default: the one the model was trained on)"})
    label_column: str | None = field(default=None, metadata={"help": "label column (default: the training one)"})
    output_dir: str | None = field(default=None, metadata={"help": "where the report goes (default: runs/evaluate/<model name>)"})
    merge_lora: bool = field(default=False, metadata={"help": "fold LoRA into the base weights before evaluating"})
    batch_size: int = field(default=64, metadata={"help": "sentences per forward pass"})


def main(argv: list[str] | None = None) -> int:
    (args,) = parse_args_with_presets([EvaluationArguments], args=argv, description=__doc__.splitlines()[0])
    from pocketlm.training.finetune import evaluate_published

    output_dir = Path(args.output_dir) if args.output_dir else runs_dir() / "evaluate" / Path(args.model.rstrip("/")).name
    report = evaluate_published(args.model, args.split, output_dir, args.dataset, args.label_column, args.merge_lora, args.batch_size)
    print(f"macro-F1 {report['macro avg']['f1-score']:.4f}, accuracy {report['accuracy']:.4f} "
          f"on {report['examples']} examples; report in {output_dir}", flush=True)
    return 0


if __name__ == "__main__":
    run(main)
