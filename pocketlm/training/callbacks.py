"""Trainer callbacks shared by the training scripts."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from transformers import TrainerCallback

from pocketlm.io import atomic_write_text, write_json
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
