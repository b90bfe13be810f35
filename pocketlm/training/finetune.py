"""The fine-tuning job behind `training_scripts/finetune_classifier.py`: train, evaluate, report, publish.

Also the evaluation job behind `training_scripts/evaluate_classifier.py`: a published classifier on a split,
written as a classification report (Markdown + JSON) and a confusion-matrix PNG.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from pocketlm.benchmarking import markdown_table
from pocketlm.data.classification import ClassificationDataArguments, load_tokenized_splits, tokenize_classification
from pocketlm.data.registry import load_classification, spec as dataset_spec
from pocketlm.errors import ConfigError, PocketLMError
from pocketlm.hub import ModelCardInfo, publish, publish_repo_id, resolve
from pocketlm.io import atomic_write_text, write_json
from pocketlm.models.peft_classifier import ClassifierSpec, build_classifier, load_classifier, parameter_counts, save_classifier
from pocketlm.settings import REPO_ROOT
from pocketlm.training.callbacks import MetricsWriterCallback
from pocketlm.training.classification_metrics import (
    classification_report,
    confusion_matrix,
    format_confusion_matrix,
    report_markdown,
    save_confusion_matrix_png,
)
from pocketlm.training.classifier import BEST_METRIC, RegularisationArguments, build_trainer, predict

ANALYSIS_MARKDOWN = REPO_ROOT / "benchmarks" / "results" / "peft_analysis" / "peft_analysis.md"
CARD_METRICS = ("f1_macro", "accuracy", "precision_macro", "recall_macro")


def write_report(labels, predictions, label_names, output_dir: Path, name: str, title: str) -> dict:
    """Print the confusion matrix; write `<name>.json`, `<name>.md` and `<name>_confusion_matrix.png` in `output_dir`."""
    report = classification_report(labels, predictions, label_names)
    print(f"{title}\n{format_confusion_matrix(confusion_matrix(labels, predictions, len(label_names)), label_names)}", flush=True)
    write_json(output_dir / f"{name}.json", report)
    atomic_write_text(output_dir / f"{name}.md", report_markdown(report, title))
    save_confusion_matrix_png(confusion_matrix(labels, predictions, len(label_names)), label_names,
                              output_dir / f"{name}_confusion_matrix.png", title)
    return report


def _dataset_card_names(dataset: str) -> tuple[str, str]:
    """(Hub id, readable name) of a data set for the model card's metadata."""
    try:
        hub_id = dataset_spec(dataset).hub_id or dataset
    except PocketLMError:  # a folder of CSVs
        hub_id = Path(dataset).name
    return hub_id, dataset


def finetune_and_publish(
    spec: ClassifierSpec,
    data_args: ClassificationDataArguments,
    regularisation: RegularisationArguments,
    training_args,
    repo_id: str | None,
    overwrite_output_dir: bool = False,
) -> dict:
    """Train on the train split (early stopping on validation macro-F1), report validation and test, publish `repo_id`."""
    from transformers import AutoTokenizer, set_seed
    from pocketlm.training.checkpoints import (
        RUN_IDENTITY, check_resume_from, claim_run_dir, newest_complete_checkpoint, weights_fingerprint,
    )

    if training_args.resume_from_checkpoint:
        # checked before the data and the model load, and as one line (the Trainer raises a bare ValueError)
        check_resume_from(training_args.resume_from_checkpoint)
    push_to_hub, hub_token = training_args.push_to_hub, training_args.hub_token
    if repo_id:  # --hub_model_id renames what is published; a push is checked before training
        repo_id = publish_repo_id(repo_id, training_args.hub_model_id, push_to_hub, hub_token)
    training_args.push_to_hub = False  # pocketlm.hub.publish uploads the finished artifact instead of checkpoints
    training_args.hub_token = None  # the Trainer pickles its arguments into every checkpoint (training_args.bin)
    output_dir = Path(training_args.output_dir)
    tokenizer = AutoTokenizer.from_pretrained(resolve(spec.model_name_or_path))
    splits, label_names = load_tokenized_splits(data_args, tokenizer, ("train", "validation", "test"), seed=training_args.seed)
    set_seed(training_args.seed)
    model = build_classifier(spec, label_names)
    trainable, total = parameter_counts(model)
    print(f"{spec.method}: {trainable:,} of {total:,} parameters trainable ({100 * trainable / total:.2f} %)", flush=True)

    title = f"{Path(spec.model_name_or_path).name} on {data_args.dataset} ({spec.method})"
    trainer = build_trainer(model, tokenizer, training_args, splits["train"], splits["validation"], label_names,
                            regularisation, callbacks=[MetricsWriterCallback(output_dir, title)])
    # an --output_dir holding checkpoints of another base, method or data set is refused, not resumed into this
    # run (claimed once the data and the model have loaded: a mistyped flag claims nothing)
    if overwrite_output_dir:
        (output_dir / RUN_IDENTITY).unlink(missing_ok=True)
    claim_run_dir(output_dir, {"base model weights": weights_fingerprint(resolve(spec.model_name_or_path)),
                               "model settings": asdict(spec), "training data": data_args.dataset})
    resume = training_args.resume_from_checkpoint or (
        newest_complete_checkpoint(output_dir) if not overwrite_output_dir else None)
    if resume:
        print(f"resuming from {resume}", flush=True)
    started = time.perf_counter()
    train_output = trainer.train(resume_from_checkpoint=resume)
    wall_seconds = time.perf_counter() - started

    results: dict[str, dict[str, float]] = {}
    for split in ("validation", "test"):
        prediction = trainer.predict(splits[split], metric_key_prefix=split)
        results[split] = {key.removeprefix(f"{split}_"): value for key, value in prediction.metrics.items()}
        results[split]["examples"] = len(splits[split])
        if trainer.is_world_process_zero():
            write_report(prediction.label_ids, prediction.predictions.argmax(-1), label_names, output_dir,
                         f"classification_report_{split}", f"{title}: {split} split")
    summary = {
        "train_runtime_s": train_output.metrics["train_runtime"], "wall_s_this_session": wall_seconds,
        "epochs": trainer.state.epoch, "best_checkpoint": trainer.state.best_model_checkpoint,
        "awp_steps": trainer.awp_steps, "global_steps": trainer.state.global_step,
        "trainable_parameters": trainable, "total_parameters": total, "train_examples": len(splits["train"]),
        "validation": results["validation"], "test": results["test"],
    }
    if not trainer.is_world_process_zero():
        return summary
    write_json(output_dir / "summary.json", summary)
    if repo_id:
        folder = publish_classifier(repo_id, trainer.model, tokenizer, spec, data_args, regularisation, training_args,
                                    summary, output_dir, push_to_hub=push_to_hub, token=hub_token)
        print(f"published {repo_id} at {folder}", flush=True)
    return summary


def publish_classifier(repo_id, model, tokenizer, spec, data_args, regularisation, training_args, summary, output_dir,
                       push_to_hub=False, token=None) -> Path:
    """Publish the trained classifier with its reports, plots and a model card filled from `summary`."""
    hub_id, dataset_name = _dataset_card_names(data_args.dataset)
    extra = {"data": asdict(data_args), "regularisation": asdict(regularisation)}

    def save(folder: Path) -> None:
        save_classifier(model, tokenizer, folder, spec, extra=extra)
        for name in ("curves.png", "metrics.json", "summary.json", "classification_report_test.md",
                     "classification_report_test.json", "classification_report_test_confusion_matrix.png"):
            if (output_dir / name).is_file():
                shutil.copy(output_dir / name, folder / ("training_log.json" if name == "metrics.json" else name))
        (folder / "training_args.json").write_text(training_args.to_json_string())

    trainable, total = summary["trainable_parameters"], summary["total_parameters"]
    analysis = ANALYSIS_MARKDOWN.read_text() if ANALYSIS_MARKDOWN.is_file() else (
        "Not measured yet: run `python benchmarks/peft_analysis.py` and republish.")
    card = ModelCardInfo(
        title=repo_id.split("/")[-1],
        summary=(f"`{spec.model_name_or_path}` fine-tuned on {dataset_name} for text classification with "
                 f"**{spec.method}** ({trainable:,} of {total:,} parameters trainable, {100 * trainable / total:.2f} %), "
                 f"adversarial weight perturbation (ε={regularisation.awp_eps}) and mixout (p={spec.mixout_p})."),
        how_to_load=(f'from pocketlm.models.peft_classifier import load_classifier\n\n'
                     f'model, tokenizer, labels = load_classifier("{repo_id}")  # merge_lora=True folds LoRA into the base\n'
                     f'logits = model(**tokenizer(["a gripping , funny film ."], return_tensors="pt")).logits\n'
                     f'print(labels[logits.argmax(-1).item()])'),
        pipeline_tag="text-classification",
        eval_dataset=hub_id,
        eval_dataset_name=dataset_name,
        eval_split="test",
        metrics={key: summary["test"][key] for key in CARD_METRICS},
        datasets=[hub_id],
        base_model=spec.model_name_or_path,
        library_name="peft" if spec.method != "full" else "transformers",
        tags=["text-classification", spec.method, "awp", "mixout"],
        template="minilm-sst2-peft.md",
        sections={
            "Validation and test": markdown_table([{"split": split, **summary[split]} for split in ("validation", "test")],
                                                  ["split", "examples", *CARD_METRICS], ".4f"),
            "Training": _training_section(spec, data_args, regularisation, training_args, summary),
            "PEFT analysis (benchmarks/peft_analysis.py)": analysis.split("\n", 1)[1] if analysis.startswith("#") else analysis,
        },
    )
    return publish(repo_id, save, card, push_to_hub=push_to_hub, token=token)


def _training_section(spec, data_args, regularisation, training_args, summary) -> str:
    lora = f"LoRA r={spec.lora_r}, alpha={spec.lora_alpha}, dropout={spec.lora_dropout} on the attention projections; " if spec.uses_lora else ""
    adapters = f"a bottleneck adapter of size {spec.adapter_size} after every FFN block; " if spec.uses_adapters else ""
    batch = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    return (
        f"{lora}{adapters}the classification head trains in full. Mixout p={spec.mixout_p} on the head's linear layers; "
        f"AWP ε={regularisation.awp_eps} from {regularisation.awp_start:.0%} of each epoch on ({summary['awp_steps']} adversarial steps). "
        f"Effective batch {batch} ({training_args.per_device_train_batch_size} × {training_args.gradient_accumulation_steps} accumulation), "
        f"learning rate {training_args.learning_rate}, up to {training_args.num_train_epochs:g} epochs with early stopping after "
        f"{regularisation.early_stopping_patience} evaluations without a validation {BEST_METRIC} gain "
        f"(stopped at epoch {summary['epochs']:.0f}; best: `{Path(summary['best_checkpoint'] or '-').name}`). "
        f"Trained on {summary['train_examples']:,} sentences of the train split. "
        f"Texts truncated to {data_args.max_seq_length} tokens, padded per batch, grouped by length: {training_args.train_sampling_strategy == 'group_by_length'}. "
        f"Training took {summary['train_runtime_s']:.0f} s."
    )


def evaluate_published(model_id: str, split: str, output_dir: Path, dataset: str | None = None, label_column: str | None = None,
                       merge_lora: bool = False, batch_size: int = 64) -> dict:
    """Run a published classifier on a split; write the classification report (MD + JSON) and confusion-matrix PNG."""
    model, tokenizer, label_names = load_classifier(model_id, merge_lora=merge_lora)
    stored = json.loads((Path(resolve(model_id)) / "pocketlm_classifier.json").read_text()).get("data", {})
    dataset = dataset or stored.get("dataset", "sst2")
    label_column = label_column or stored.get("label_column", "label")
    raw = load_classification(dataset, split, label_column)
    if list(raw.features["label"].names) != list(label_names):
        raise ConfigError(f"data set {dataset!r} has labels {raw.features['label'].names}, the model {label_names}")
    tokenized = tokenize_classification(raw, tokenizer, stored.get("max_seq_length", 128))
    labels, predictions = predict(model, tokenizer, tokenized, batch_size=batch_size)
    output_dir.mkdir(parents=True, exist_ok=True)
    return write_report(labels, predictions, label_names, output_dir, f"classification_report_{split}",
                        f"{model_id} on {dataset} ({split} split)")
