"""Fine-tune a text classifier with LoRA + bottleneck adapters, AWP and mixout; evaluate it; publish it.

    accelerate launch --config_file accelerate_configs/cpu.yaml training_scripts/finetune_classifier.py --preset full
    accelerate launch --config_file accelerate_configs/single_gpu_4gb.yaml training_scripts/finetune_classifier.py \
        --preset full --per_device_train_batch_size 32 --gradient_accumulation_steps 1

Defaults: the offline MiniLM encoder on SST-2, published as `pocketlm/minilm-sst2-peft`. Any Hub id
(`--model_name_or_path distilbert-base-uncased`) and the mirror's other sets (`--dataset ag_news`, `trec`,
`sentiment-labelled-sentences`) work too. Every `TrainingArguments` flag is accepted. A rerun with the same
`--output_dir` resumes from its last checkpoint (`--overwrite_output_dir` starts afresh).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pocketlm import BASE_ENCODER, MINILM_SST2_PEFT
from pocketlm.cli import parse_args_with_presets, run
from pocketlm.data.classification import ClassificationDataArguments
from pocketlm.hub import validate_repo_id
from pocketlm.models.peft_classifier import ClassifierSpec
from pocketlm.settings import runs_dir
from pocketlm.training.distributed import OutputDirLock, check_launch
from pocketlm.training.classifier import BEST_METRIC, RegularisationArguments

_COMMON = dict(
    eval_strategy="epoch", save_strategy="epoch", save_total_limit=2, load_best_model_at_end=True,
    metric_for_best_model=BEST_METRIC, greater_is_better=True, logging_steps=20, report_to="none",
    per_device_train_batch_size=32, per_device_eval_batch_size=64, gradient_accumulation_steps=1,
    warmup_steps=0.06, weight_decay=0.01, train_sampling_strategy="group_by_length", dataloader_num_workers=0, seed=42,
)
PRESETS = {
    # The published model: the whole SST-2 train split (6,920 sentences); 2 epochs keep it near 10 minutes on the
    # 2-core CPU (more epochs: `--num_train_epochs 6`, early stopping on validation macro-F1 then decides).
    "full": dict(_COMMON, output_dir=str(runs_dir() / "minilm-sst2-peft"), num_train_epochs=2, learning_rate=1e-3),
    # For `make demo`: a 2,000-sentence subset, 2 epochs (a few CPU-minutes).
    "quick": dict(_COMMON, output_dir=str(runs_dir() / "minilm-sst2-peft-quick"), num_train_epochs=2, learning_rate=1e-3,
                  max_train_samples=2000),
}


@dataclass
class PublishArguments:
    repo_id: str | None = field(
        default=None, metadata={"help": f"publish as this id (default: {MINILM_SST2_PEFT} for the MiniLM on SST-2, "
                                        "else pocketlm/<model>-<dataset>-peft)"})
    publish: bool = field(default=True, metadata={"help": "publish to the local hub folder (--publish false to skip)"})
    # transformers 5 dropped this flag from TrainingArguments; pocketlm's resume logic still honours it
    overwrite_output_dir: bool = field(default=False, metadata={"help": "start afresh instead of resuming from the "
                                                                        "last checkpoint in --output_dir"})

    def __post_init__(self):
        if self.repo_id is not None:
            validate_repo_id(self.repo_id, "--repo_id")


def default_repo_id(spec: ClassifierSpec, dataset: str) -> str:
    if spec.model_name_or_path == BASE_ENCODER and dataset == "sst2":
        return MINILM_SST2_PEFT
    model = Path(spec.model_name_or_path.rstrip("/")).name.lower()
    return f"pocketlm/{model}-{Path(dataset.rstrip('/')).name.lower()}-{spec.method.replace('+', '-')}"


def main(argv: list[str] | None = None) -> int:
    from transformers import TrainingArguments

    from pocketlm.training.finetune import finetune_and_publish

    check_launch()
    spec, data_args, regularisation, publish_args, training_args = parse_args_with_presets(
        [ClassifierSpec, ClassificationDataArguments, RegularisationArguments, PublishArguments, TrainingArguments],
        PRESETS, "full", argv, description=__doc__.splitlines()[0],
    )
    repo_id = publish_args.repo_id or validate_repo_id(default_repo_id(spec, data_args.dataset),
                                                       "--repo_id (derived from --model_name_or_path and --dataset; pass one)")
    with OutputDirLock(training_args.output_dir):
        finetune_and_publish(spec, data_args, regularisation, training_args, repo_id if publish_args.publish else None,
                             overwrite_output_dir=publish_args.overwrite_output_dir)
    return 0


if __name__ == "__main__":
    run(main, tcmalloc=True)
