"""Trainer callbacks shared by the training scripts."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

from transformers import TrainerCallback

from pocketlm.io import atomic_write_text, write_dir, write_json
from pocketlm.training.plots import save_training_curves


def write_history(history: list[dict], output_dir: str | Path, title: str) -> None:
    """Write a run's log records as `metrics.json`, `metrics.csv` and `curves.png` in `output_dir`."""
    output_dir = Path(output_dir)
    write_json(output_dir / "metrics.json", history)
    columns = sorted({key for record in history for key in record})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(output_dir / "metrics.csv", buffer.getvalue())
    save_training_curves(history, output_dir / "curves.png", title=title)


class MetricsWriterCallback(TrainerCallback):
    """After every evaluation and at the end of training, write the log history (JSON, CSV) and its curves (PNG)."""

    def __init__(self, output_dir: str | Path, title: str = "training"):
        self.output_dir = Path(output_dir)
        self.title = title

    def _write(self, state) -> None:
        if state.is_world_process_zero and state.log_history:
            write_history(state.log_history, self.output_dir, self.title)

    def on_evaluate(self, args, state, control, **kwargs):
        self._write(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._write(state)


class BestCheckpointCallback(TrainerCallback):
    """Keep `best_dir` = the model (+ tokenizer) with the lowest `metric` seen in any evaluation so far.

    Works in `Trainer` and in pocketlm's pretraining loop alike (both call `on_evaluate` with the model and the
    processing class); the folder is written aside and swapped in whole, so a kill never leaves half a checkpoint.
    Under FSDP each process holds a shard of the weights: pass `full_state_dict` (e.g. accelerate's
    `get_state_dict`), which every process calls together for a new best, and the main process saves what it returns.
    """

    def __init__(self, best_dir: str | Path, metric: str = "eval_ppl", full_state_dict: Callable[[], dict] | None = None):
        self.best_dir = Path(best_dir)
        self.metric = metric
        self.full_state_dict = full_state_dict

    def on_evaluate(self, args, state, control, metrics=None, model=None, processing_class=None, **kwargs):
        value = (metrics or {}).get(self.metric)
        if value is None or not (state.is_world_process_zero or self.full_state_dict):
            return
        # Every process sees the same (gathered) metrics, so all of them agree on whether this is a new best.
        if state.best_metric is not None and value >= state.best_metric:
            return
        state.best_metric, state.best_global_step = value, state.global_step
        state.best_model_checkpoint = str(self.best_dir)
        state_dict = self.full_state_dict() if self.full_state_dict else None
        if not state.is_world_process_zero:
            return

        def build(folder: Path) -> None:
            model.save_pretrained(folder, state_dict=state_dict)
            if processing_class is not None:
                processing_class.save_pretrained(folder)
            write_json(folder / "best_metrics.json", {**metrics, "step": state.global_step, "epoch": state.epoch})

        write_dir(self.best_dir, build)
