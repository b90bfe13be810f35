"""Classification metrics: accuracy, precision / recall / F1 (macro and per class), confusion matrix, report.

scikit-learn computes them (`evaluate.load` would fetch metric scripts from the Hub, which is offline here).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pocketlm.io import atomic_write


def metric_key(label: str) -> str:
    """A label name as a metric-name suffix: `Sci/Tech` → `sci_tech`."""
    return re.sub(r"[^0-9a-z]+", "_", label.lower()).strip("_") or "label"


def classification_scores(labels: Sequence[int], predictions: Sequence[int], label_names: Sequence[str]) -> dict[str, float]:
    """`accuracy`, `precision|recall|f1_macro` and `precision|recall|f1_<label>` for every label."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    indices = list(range(len(label_names)))
    per_class = precision_recall_fscore_support(labels, predictions, labels=indices, average=None, zero_division=0)
    macro = precision_recall_fscore_support(labels, predictions, labels=indices, average="macro", zero_division=0)
    scores = {"accuracy": float(accuracy_score(labels, predictions))}
    for name, value in zip(("precision", "recall", "f1"), macro[:3]):
        scores[f"{name}_macro"] = float(value)
    for i, label in enumerate(label_names):
        for name, values in zip(("precision", "recall", "f1"), per_class[:3]):
            scores[f"{name}_{metric_key(label)}"] = float(values[i])
    return scores


def make_compute_metrics(label_names: Sequence[str]):
    """A Trainer `compute_metrics`: argmax of the logits against the labels."""

    def compute_metrics(eval_prediction) -> dict[str, float]:
        logits = eval_prediction.predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        return classification_scores(eval_prediction.label_ids, np.argmax(logits, axis=-1), label_names)

    return compute_metrics


def confusion_matrix(labels: Sequence[int], predictions: Sequence[int], n_labels: int) -> np.ndarray:
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    return sk_confusion_matrix(labels, predictions, labels=list(range(n_labels)))


def format_confusion_matrix(matrix: np.ndarray, label_names: Sequence[str]) -> str:
    """The matrix as aligned text (rows: true label, columns: predicted), for the console."""
    width = max(8, *(len(n) for n in label_names), len(str(matrix.max())) + 1)
    header = "true \\ predicted".ljust(width + 2) + "".join(n.rjust(width + 1) for n in label_names)
    rows = [label.ljust(width + 2) + "".join(str(v).rjust(width + 1) for v in row) for label, row in zip(label_names, matrix)]
    return "\n".join([header, *rows])


def save_confusion_matrix_png(matrix: np.ndarray, label_names: Sequence[str], path: str | Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    size = 3.5 + 0.5 * len(label_names)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(matrix, display_labels=list(label_names)).plot(ax=ax, cmap="Blues", colorbar=False, values_format="d")
    ax.set_title(title)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def classification_report(labels: Sequence[int], predictions: Sequence[int], label_names: Sequence[str]) -> dict:
    """scikit-learn's report as a dict (per class, macro avg, weighted avg, accuracy) plus the confusion matrix."""
    from sklearn.metrics import classification_report as sk_report

    report = sk_report(labels, predictions, labels=list(range(len(label_names))), target_names=list(label_names),
                       output_dict=True, zero_division=0)
    report["confusion_matrix"] = confusion_matrix(labels, predictions, len(label_names)).tolist()
    report["label_names"] = list(label_names)
    report["examples"] = len(labels)
    return report


def report_markdown(report: dict, title: str) -> str:
    """The report as a Markdown table, then the confusion matrix."""
    names = report["label_names"]
    lines = [f"# {title}", "", f"{report['examples']} examples; accuracy **{report['accuracy']:.4f}**.", "",
             "| class | precision | recall | F1 | support |", "| --- | ---: | ---: | ---: | ---: |"]
    for row in [*names, "macro avg", "weighted avg"]:
        r = report[row]
        lines.append(f"| {row} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1-score']:.4f} | {int(r['support'])} |")
    lines += ["", "Confusion matrix (rows: true label, columns: predicted):", "",
              "| true \\ predicted | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    for name, row in zip(names, report["confusion_matrix"]):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"
