"""Training curves as PNG: what people look at first after a run."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers or in CI
import matplotlib.pyplot as plt  # noqa: E402

from pocketlm.io import atomic_write  # noqa: E402


def save_training_curves(
    history: Sequence[dict],
    path: str | Path,
    title: str = "training",
    losses: Iterable[str] = ("loss", "eval_loss"),
    x: str = "step",
) -> None:
    """Plot the loss keys on the left and every other numeric eval metric on the right, against `x`.

    `history` is a list of log records such as transformers' `trainer.state.log_history`:
    `{"step": 10, "epoch": 0.5, "loss": 3.2}`, `{"step": 20, "eval_loss": 3.0, "eval_f1": 0.7}`...
    """
    losses = tuple(losses)
    metrics = sorted(
        {k for rec in history for k, v in rec.items() if k.startswith("eval_") and k not in losses
         and isinstance(v, (int, float)) and not k.endswith(("_runtime", "_per_second"))}
    )
    fig, axes = plt.subplots(1, 2 if metrics else 1, figsize=(11 if metrics else 6, 4), squeeze=False)
    for ax, keys in zip(axes[0], (losses, metrics)):
        plotted = []
        for key in keys:
            points = [(rec[x], rec[key]) for rec in history if key in rec and x in rec]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o" if len(points) < 30 else None, label=key)
                plotted += [y for y in ys if y == y]  # not NaN
        if plotted and min(plotted) > 0 and max(plotted) / min(plotted) > 30:
            ax.set_yscale("log")  # perplexity in the hundreds beside bits per byte near 2: both stay readable
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a run stopped before its first log has nothing to label
            ax.legend()
    axes[0][0].set_title(f"{title}: loss")
    if metrics:
        axes[0][1].set_title(f"{title}: evaluation")
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
