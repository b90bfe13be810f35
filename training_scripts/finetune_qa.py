"""Fine-tune the offline MiniLM for extractive QA on SQuAD v1.1 and publish `pocketlm/minilm-squad`.

    accelerate launch --config_file accelerate_configs/cpu.yaml training_scripts/finetune_qa.py --preset full
    python training_scripts/finetune_qa.py --preset smoke          # seconds, for tests
    python training_scripts/finetune_qa.py --preset demo           # a few CPU-minutes, for `make demo`

Any `TrainingArguments` flag works (`--learning_rate`, `--num_train_epochs`, `--per_device_train_batch_size`,
`--bf16`...), and so do the QA flags (`--max_length`, `--doc_stride`, `--max_train_samples`...). An
interrupted run resumes from the last checkpoint in `--output_dir` (default `runs/minilm-squad-<preset>`).
"""

from __future__ import annotations

import argparse
import sys

from transformers import TrainingArguments

from pocketlm.cli import parse_args_with_presets, run
from pocketlm.training.distributed import OutputDirLock, check_launch
from pocketlm.training.qa import QAArguments, default_output_dir, finetune_question_answering

# fp32: where bf16 is emulated (AVX-512 without AMX/AVX512-BF16) a bf16-autocast training step measured 2.5x slower
# than fp32; with AMX it was only ~12% faster (12 steps of `--preset quick`), so one precision serves every host.
_COMMON = {
    "bf16": False, "dataloader_pin_memory": False, "lr_scheduler_type": "linear", "warmup_steps": 0.1, "weight_decay": 0.01,
    "train_sampling_strategy": "group_by_length", "eval_strategy": "steps", "save_strategy": "steps", "save_total_limit": 1,
    "logging_steps": 20, "report_to": "none", "dataloader_num_workers": 0, "seed": 42,
}
PRESETS = {
    # a few optimiser steps on a handful of questions: exercises every code path
    "smoke": {**_COMMON, "max_train_samples": 24, "max_eval_samples": 12, "eval_loss_samples": 8, "max_length": 128,
              "doc_stride": 32, "max_steps": 2, "per_device_train_batch_size": 8, "learning_rate": 1e-4,
              "logging_steps": 1, "eval_steps": 2, "save_steps": 2},
    # <= 5 CPU-minutes on a quiet 2-core machine: a weak model for `make demo`
    "demo": {**_COMMON, "max_train_samples": 1500, "max_eval_samples": 300, "eval_loss_samples": 100,
             "num_train_epochs": 1, "per_device_train_batch_size": 8, "learning_rate": 1e-4,
             "eval_steps": 50, "save_steps": 50},
    # half of the training questions, one pass
    "quick": {**_COMMON, "max_train_samples": 6000, "num_train_epochs": 1, "per_device_train_batch_size": 16,
              "learning_rate": 1e-4, "eval_steps": 100, "save_steps": 100},
    # the published model: every training question, one pass, scored on the whole validation split
    "full": {**_COMMON, "num_train_epochs": 1, "per_device_train_batch_size": 16, "learning_rate": 1e-4,
             "eval_steps": 200, "save_steps": 200},
}


_preset_parser = argparse.ArgumentParser(add_help=False)
_preset_parser.add_argument("--preset", default="full")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    check_launch()
    qa_args, training_args = parse_args_with_presets(
        [QAArguments, TrainingArguments], PRESETS, "full", argv, description=__doc__.splitlines()[0]
    )
    preset = _preset_parser.parse_known_args(argv)[0].preset
    if training_args.output_dir in (None, "trainer_output"):
        training_args.output_dir = default_output_dir(preset)
    with OutputDirLock(training_args.output_dir):
        metrics = finetune_question_answering(qa_args, training_args, preset=preset)
    if "f1" in metrics:  # the main process's (the others only trained)
        print({k: metrics[k] for k in ("exact_match", "f1", "train_seconds")}, flush=True)
    return 0


if __name__ == "__main__":
    run(main, tcmalloc=True)
