"""Fine-tune an encoder for extractive QA (SQuAD v1.1) with transformers' `Trainer`, evaluate EM/F1, publish.

What makes it fit a 2-core CPU (compared with the `run_qa.py` defaults of max length 384, padded):
* windows of 256 tokens with a 64-token document stride — most SQuAD contexts fit whole in 256 tokens;
* dynamic padding (`DataCollatorWithPadding`) and length-grouped batches, so a batch is only as long as its
  longest window, not 384 — on this data that is well under half the tokens;
* a high learning rate for a small encoder.
The window settings are written into the model's `config.json` (`qa_max_length`, `qa_doc_stride`) so that
evaluation, the ONNX export and the server cut contexts exactly as training did.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from pocketlm import BASE_ENCODER, MINILM_SQUAD
from pocketlm.benchmarking import machine_description
from pocketlm.data import load_squad
from pocketlm.data.qa import qa_tokenizer, training_features
from pocketlm.errors import ConfigError
from pocketlm.hub import ModelCardInfo, publish, publish_repo_id, resolve, validate_repo_id
from pocketlm.settings import runs_dir


@dataclass
class QAArguments:
    model_name_or_path: str = field(default=BASE_ENCODER, metadata={"help": "encoder to fine-tune: a Hub id, alias or path"})
    max_length: int = field(default=256, metadata={"help": "tokens per window (question + context)"})
    doc_stride: int = field(default=64, metadata={"help": "tokens shared by neighbouring windows of a long context"})
    max_train_samples: int | None = field(default=None, metadata={"help": "use the first N training questions"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "score EM/F1 on the first N validation questions"})
    eval_loss_samples: int = field(default=400, metadata={"help": "validation questions for the periodic eval loss"})
    output_repo: str = field(default=MINILM_SQUAD, metadata={"help": "repo id to publish to (in POCKETLM_HUB_DIR)"})

    def __post_init__(self):
        if self.max_length < 64:
            raise ConfigError(f"--max_length must be at least 64 (got {self.max_length})")
        if not 0 <= self.doc_stride < self.max_length // 2:
            raise ConfigError(f"--doc_stride must be in [0, max_length/2) (got {self.doc_stride} for max_length {self.max_length})")
        for name in ("max_train_samples", "max_eval_samples"):
            if (value := getattr(self, name)) is not None and value < 1:
                raise ConfigError(f"--{name} must be positive (got {value})")
        validate_repo_id(self.output_repo, "--output_repo")


def _records(split: str, limit: int | None) -> list[dict]:
    data = load_squad(split)
    return data.select(range(min(limit, len(data)))).to_list() if limit else data.to_list()


def _features_dataset(records: list[dict], tokenizer):
    import datasets

    return datasets.Dataset.from_dict(training_features(records, tokenizer))


@dataclass
class QAData:
    """The SQuAD questions used and the tokenised windows the Trainer sees."""

    train_records: list[dict]
    eval_records: list[dict]  # scored for EM/F1 after training
    train_dataset: object
    eval_loss_dataset: object  # the first `eval_loss_samples` of `eval_records`, for the periodic eval loss


def finetune_question_answering(args: QAArguments, training_args, preset: str | None = None) -> dict:
    """Train, evaluate EM/F1 on SQuAD validation, publish `args.output_repo`; returns the metrics."""
    import torch
    from transformers import AutoTokenizer

    push, token = training_args.push_to_hub, training_args.hub_token
    args.output_repo = publish_repo_id(args.output_repo, training_args.hub_model_id, push, token)  # before training
    source = resolve(args.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if not tokenizer.is_fast:
        raise ConfigError(f"{args.model_name_or_path}: QA preprocessing needs a fast tokenizer (offsets)")
    data = _qa_data(args, tokenizer)
    output_dir = Path(training_args.output_dir)
    _claim_output_dir(args, output_dir, source)  # once the inputs are known to be good: a typo claims nothing
    trainer = _qa_trainer(args, training_args, source, tokenizer, data)
    train_output, train_seconds, train_cpu_seconds = _train(trainer, output_dir)
    if not trainer.is_world_process_zero():  # under DDP one process scores the whole validation set and publishes
        return {"train_seconds": round(train_seconds, 1)}
    scores, eval_seconds = _score_squad(args, trainer, tokenizer, data.eval_records, output_dir)

    metrics = {
        "exact_match": round(scores["exact_match"], 2),
        "f1": round(scores["f1"], 2),
        "eval_questions": scores["questions"],
        "train_questions": len(data.train_records),
        "train_windows": len(data.train_dataset),
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(train_cpu_seconds, 1),
        "train_loss": round(train_output.training_loss, 4),
        "eval_seconds": round(eval_seconds, 1),
        "threads": torch.get_num_threads(),
    }
    card = _model_card(args, training_args, metrics, preset)

    def save(folder: Path) -> None:
        trainer.save_model(str(folder))  # weights (safetensors), config with the window settings, tokenizer
        # The Trainer also writes training_args.bin, a pickle; publish the arguments as JSON instead.
        (folder / "training_args.bin").unlink(missing_ok=True)
        (folder / "training_args.json").write_text(training_args.to_json_string())
        for extra in ("metrics.csv", "curves.png"):
            if (output_dir / extra).is_file():
                (folder / extra).write_bytes((output_dir / extra).read_bytes())

    published = publish(args.output_repo, save, card, push_to_hub=push, token=token)
    print(f"published {args.output_repo} -> {published}", flush=True)
    return metrics


def _claim_output_dir(args: QAArguments, output_dir: Path, source) -> None:
    """Refuse an `--output_dir` that holds checkpoints of another base model or other windows (`claim_run_dir`):
    the Trainer would resume them into this run. A longer or differently scheduled run of the same may resume."""
    from pocketlm.training.checkpoints import claim_run_dir, weights_fingerprint

    claim_run_dir(output_dir, {"base model weights": weights_fingerprint(source),
                               "windows": {"max_length": args.max_length, "doc_stride": args.doc_stride},
                               "training questions": args.max_train_samples})


def _qa_data(args: QAArguments, tokenizer) -> QAData:
    """Cut the questions into overlapping windows of `max_length` tokens (`doc_stride` shared), as served."""
    windows = qa_tokenizer(tokenizer, args.max_length, args.doc_stride)
    train_records = _records("train", args.max_train_samples)
    eval_records = _records("validation", args.max_eval_samples)
    train_dataset = _features_dataset(train_records, windows)
    eval_loss_dataset = _features_dataset(eval_records[: args.eval_loss_samples], windows)
    print(f"{len(train_records)} training questions -> {len(train_dataset)} windows of <= {args.max_length} tokens", flush=True)
    return QAData(train_records, eval_records, train_dataset, eval_loss_dataset)


def _qa_trainer(args: QAArguments, training_args, source, tokenizer, data: QAData):
    """A plain `Trainer` with dynamic padding; the window settings go into the model's config so that every later
    reader of the model cuts contexts as training did. The caller keeps `push_to_hub`/`hub_token` (read them first)."""
    from transformers import AutoModelForQuestionAnswering, DataCollatorWithPadding, Trainer

    from pocketlm.training.callbacks import MetricsWriterCallback

    model = AutoModelForQuestionAnswering.from_pretrained(source)
    model.config.qa_max_length = args.max_length
    model.config.qa_doc_stride = args.doc_stride

    training_args.push_to_hub = False  # we publish (and push) through pocketlm.hub with a model card
    training_args.hub_token = None  # the Trainer pickles its arguments into every checkpoint (training_args.bin)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=data.train_dataset,
        eval_dataset=data.eval_loss_dataset,
        data_collator=DataCollatorWithPadding(tokenizer),  # dynamic padding: each batch to its longest window
        processing_class=tokenizer,
        callbacks=[MetricsWriterCallback(Path(training_args.output_dir), title=_history_title(args))],
    )
    # The QA loss is a per-batch mean; see `ClassifierTrainer.loss_is_scaled_for_ga` (transformers#47688).
    trainer.loss_is_scaled_for_ga = False
    return trainer


def _train(trainer, output_dir: Path) -> tuple[object, float, float]:
    """Train, resuming from the newest complete checkpoint in `output_dir` if an earlier run left one;
    returns the Trainer's output and the wall-clock and CPU seconds it took."""
    from pocketlm.training.checkpoints import newest_complete_checkpoint

    last = newest_complete_checkpoint(output_dir)
    if last:
        print(f"resuming from {last}", flush=True)
    started, cpu_started = time.perf_counter(), time.process_time()
    train_output = trainer.train(resume_from_checkpoint=last)
    return train_output, time.perf_counter() - started, time.process_time() - cpu_started


def _score_squad(args: QAArguments, trainer, tokenizer, eval_records: list[dict],
                 output_dir: Path) -> tuple[dict, float]:
    """EM/F1 with the same windowing and span search as inference (not the Trainer's eval loss), logged into the
    training history; returns the scores and the seconds they took."""
    from pocketlm.inference.qa_engine import evaluate_squad
    from pocketlm.inference.qa_torch import TorchQuestionAnswerer
    from pocketlm.training.callbacks import write_history

    answerer = TorchQuestionAnswerer(trainer.model, tokenizer, max_length=args.max_length, stride=args.doc_stride, batch_size=32)
    started = time.perf_counter()
    scores = evaluate_squad(answerer, eval_records)
    eval_seconds = time.perf_counter() - started
    trainer.log({"eval_exact_match": scores["exact_match"], "eval_f1": scores["f1"]})
    write_history(trainer.state.log_history, output_dir, _history_title(args))
    return scores, eval_seconds


def _history_title(args: QAArguments) -> str:
    return f"QA fine-tune of {args.model_name_or_path}"


def _model_card(args: QAArguments, training_args, metrics: dict, preset: str | None) -> ModelCardInfo:
    epochs = training_args.num_train_epochs if training_args.max_steps <= 0 else None
    effective_batch = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * max(1, training_args.world_size)
    setup = (
        f"Fine-tuned from `{args.model_name_or_path}` by `training_scripts/finetune_qa.py"
        f"{' --preset ' + preset if preset else ''}` on {metrics['train_questions']:,} questions of the mirror's SQuAD v1.1 "
        f"train split ({metrics['train_windows']:,} windows of at most {args.max_length} tokens, document stride "
        f"{args.doc_stride}, dynamic padding), "
        + (f"{epochs:g} epoch(s)" if epochs is not None else f"{training_args.max_steps} steps")
        + f", effective batch {effective_batch}, learning rate {training_args.learning_rate:g} "
        f"({training_args.lr_scheduler_type.value if hasattr(training_args.lr_scheduler_type, 'value') else training_args.lr_scheduler_type} schedule, "
        f"warm-up {training_args.warmup_steps:g}{' of the steps' if training_args.warmup_steps < 1 else ' steps'}), {'bf16 autocast' if training_args.bf16 else 'fp32'}.\n\n"
        f"Training took **{metrics['train_seconds'] / 60:.1f} minutes** ({metrics['train_cpu_seconds'] / 60:.1f} CPU-minutes, "
        f"{metrics['threads']} torch threads) on {machine_description()}; final training loss {metrics['train_loss']}.\n\n"
        f"EM/F1 use the official SQuAD v1.1 normalisation on the first {metrics['eval_questions']:,} questions of the "
        "validation split (`pocketlm/inference/squad_metrics.py`); the span is the best start+end logit over all "
        "windows (`pocketlm/inference/qa_postprocess.py`). Reproduce: "
        f"`python training_scripts/evaluate_qa.py ../shared/data/squad-v1.1/validation.json --model {args.output_repo}`."
    )
    how_to_load = (
        "from pocketlm.inference.qa_torch import TorchQuestionAnswerer\n"
        f"qa = TorchQuestionAnswerer.from_pretrained(\"{args.output_repo}\")  # AutoModelForQuestionAnswering inside\n"
        "qa.answer(\"Where is the Eiffel Tower?\", \"The Eiffel Tower is in Paris.\").text"
    )
    return ModelCardInfo(
        title=args.output_repo.split("/")[-1],
        summary=f"An extractive question-answering model (SQuAD v1.1): `{args.model_name_or_path}` with a span head, "
        "small enough to answer in tens of milliseconds on a laptop CPU.",
        how_to_load=how_to_load,
        pipeline_tag="question-answering",
        eval_dataset="rajpurkar/squad",
        eval_dataset_name="SQuAD v1.1 (validation, pocketlm mirror)",
        eval_split="validation",
        metrics={"exact_match": metrics["exact_match"], "f1": metrics["f1"]},
        datasets=["rajpurkar/squad"],
        base_model=args.model_name_or_path,
        tags=["question-answering", "squad"],
        sections={"Training": setup, "Training curves": "![loss curves](curves.png)"},
    )


def default_output_dir(preset: str | None) -> str:
    return str(runs_dir() / f"minilm-squad-{preset or 'custom'}")
