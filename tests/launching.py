"""Launching pretraining as a user would, for the multi-process tests (tests/test_distributed.py on the CPU,
tests/test_gpu.py on a GPU): `accelerate launch` with a config from `accelerate_configs/`, the test driver
(`distributed_pretrain_driver.py`) recording losses and logits, and a small real corpus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CPU2 = "accelerate_configs/cpu_multiprocess.yaml"
DRIVER = "tests/distributed_pretrain_driver.py"
# Small enough for seconds per run, big enough that steps move the loss: 8 steps, eval on 7 chunks in batches of 2
# (uneven over 2 processes: 4 batches, the last one holding a single chunk).
PRETRAIN = ["--d_model", "32", "--n_layers", "2", "--n_heads", "2", "--d_ff", "64", "--max_steps", "8",
            "--learning_rate", "3e-3", "--warmup_steps", "2", "--logging_steps", "1", "--save_steps", "4",
            "--eval_max_chunks", "7", "--per_device_eval_batch_size", "2", "--generation_prompts", "0",
            "--mixed_precision", "no", "--masking", "none", "--seed", "7"]


def launch_env(tmp_path: Path) -> dict:
    """This interpreter's environment with the checkout importable and the hub and runs under `tmp_path`."""
    python_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": python_path, "POCKETLM_HUB_DIR": str(tmp_path / "hub"),
            "POCKETLM_RUNS_DIR": str(tmp_path / "runs"), "OMP_NUM_THREADS": "1"}


def launch(args: list[str], env: dict, config: str | None = CPU2, check: bool = True, timeout: int = 300):
    """`accelerate launch [--config_file config] args...` in the checkout; asserts success unless `check` is off."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch"] + (["--config_file", config] if config else [])
    result = subprocess.run(launcher + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def prepare_small_corpus(texts_dir: Path, out: Path) -> Path:
    """The real preparation on 12 WikiText-2 articles: a 320-token BPE vocabulary, 64-token chunks."""
    from pocketlm.data import corpus_folder
    from pocketlm.data.corpus import prepare_corpus, read_text_folder

    for path in sorted(corpus_folder().glob("*.txt"))[:12]:
        (texts_dir / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    prepare_corpus(read_text_folder(texts_dir), out, vocab_size=320, chunk_length=64, validation_ratio=0.1)
    return out


def pretrain_args(corpus: Path, output_dir: Path, batch: int) -> list[str]:
    return [*PRETRAIN, "--data_dir", str(corpus), "--output_dir", str(output_dir),
            "--per_device_train_batch_size", str(batch)]


def recorded_losses(record_dir: Path) -> dict[int, float]:
    """The per-step losses the driver recorded."""
    return {int(k): v for k, v in json.loads((record_dir / "losses.json").read_text())["losses"].items()}
