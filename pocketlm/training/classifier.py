"""The classifier's Trainer configuration: a `Trainer` subclass with AWP, its arguments, and batched prediction.

Everything else is transformers' own: `DataCollatorWithPadding`, `EarlyStoppingCallback`, the evaluation
loop, checkpointing and resumption, accelerate (fp16 on a GPU, bf16 autocast on CPU, DDP/FSDP).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import EarlyStoppingCallback, Trainer

from pocketlm.data.classification import padding_collator
from pocketlm.errors import ConfigError
from pocketlm.training.awp import AWP
from pocketlm.training.classification_metrics import make_compute_metrics

BEST_METRIC = "f1_macro"


@dataclass
class RegularisationArguments:
    """AWP and early stopping (mixout is part of the model: `ClassifierSpec.mixout_p`)."""

    awp_eps: float = field(default=0.01, metadata={"help": "AWP perturbation size relative to each weight's norm; 0 = off"})
    awp_start: float = field(
        default=0.5, metadata={"help": "AWP is active from this fraction of each epoch to its end (0.5 = the second half)"})
    early_stopping_patience: int = field(
        default=3, metadata={"help": f"stop after this many evaluations without a {BEST_METRIC} gain; 0 = never"})

    def __post_init__(self):
        if self.awp_eps < 0:
            raise ConfigError(f"--awp_eps must be >= 0, got {self.awp_eps}")
        if not 0.0 <= self.awp_start < 1.0:
            raise ConfigError(f"--awp_start must be in [0, 1), got {self.awp_start}")
        if self.early_stopping_patience < 0:
            raise ConfigError(f"--early_stopping_patience must be >= 0, got {self.early_stopping_patience}")


class ClassifierTrainer(Trainer):
    """A Trainer whose training step adds an AWP adversarial pass during the second half of every epoch.

    Why the second half: AWP seeks a flat region around weights the model has already fitted; at the start of
    an epoch (above all the first, with a random head) the clean gradient is what moves the model, and an
    adversarial pass there mostly doubles the cost. Active for half the steps, it costs ~1.5× a plain epoch.
    Under gradient accumulation each micro-batch perturbs along the gradient accumulated so far.
    """

    # The classification loss is a per-batch mean: the Trainer must divide it by the accumulation steps. Left to
    # itself, transformers 5 skips that for any model whose forward takes **kwargs (huggingface/transformers#47688).
    loss_is_scaled_for_ga = False

    def __init__(self, *args, awp_eps: float = 0.0, awp_start: float = 0.5, **kwargs):
        super().__init__(*args, **kwargs)
        self.awp = AWP(self.model, awp_eps) if awp_eps > 0 else None
        self.awp_start = awp_start
        self.awp_steps = 0

    def awp_active(self) -> bool:
        """True in the part of the current epoch where AWP runs (`state.epoch` is fractional during training)."""
        return self.awp is not None and (self.state.epoch or 0.0) % 1.0 >= self.awp_start

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.awp_active():
            with self.awp.perturbed() as moved:
                if moved:  # forward + backward at the perturbed weights; the gradients add to the clean ones
                    super().training_step(model, inputs, num_items_in_batch)
                    self.awp_steps += 1
        return loss


def build_trainer(model, tokenizer, training_args, train_dataset, eval_dataset, label_names, regularisation: RegularisationArguments,
                  callbacks=()) -> ClassifierTrainer:
    """A ClassifierTrainer with dynamic padding, the classification metrics and, if asked, early stopping on macro-F1."""
    callbacks = list(callbacks)
    if regularisation.early_stopping_patience:
        if training_args.metric_for_best_model not in (BEST_METRIC, f"eval_{BEST_METRIC}"):
            raise ConfigError(f"early stopping watches {BEST_METRIC}: set --metric_for_best_model {BEST_METRIC} "
                              "(or --early_stopping_patience 0)")
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=regularisation.early_stopping_patience))
    return ClassifierTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=padding_collator(tokenizer, pad_to_multiple_of=8 if half_precision() else None),
        compute_metrics=make_compute_metrics(label_names),
        callbacks=callbacks,
        awp_eps=regularisation.awp_eps,
        awp_start=regularisation.awp_start,
    )


def half_precision() -> bool:
    """Whether training runs in fp16/bf16: set by `--fp16`/`--bf16` or an accelerate config (TrainingArguments syncs both)."""
    return os.environ.get("ACCELERATE_MIXED_PRECISION", "no") in ("fp16", "bf16")


@torch.inference_mode()
def predict(model, tokenizer, dataset, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """`(labels, predicted labels)` for a tokenised data set, in order, batch by batch (no Trainer needed)."""
    from tqdm.auto import tqdm

    collate = padding_collator(tokenizer)
    model.eval()
    labels, predictions = [], []
    for start in tqdm(range(0, len(dataset), batch_size), desc="predicting", unit="batch"):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        labels.append(batch.pop("labels").numpy())
        predictions.append(model(**batch).logits.argmax(-1).numpy())
    return np.concatenate(labels), np.concatenate(predictions)
