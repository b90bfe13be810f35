"""The main job: build every missing artifact with the quick presets, publish it, then open what was built.

Each step is a command a user could type themselves (an `accelerate launch` of a training script, a
benchmark...), run in order; a step whose artifact is already in the local hub folder is skipped, so a
second run reuses everything and opens in seconds. `python -m pocketlm.demo --list` shows the plan.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pocketlm import MINILM_SQUAD, MINILM_SQUAD_ONNX, TINY_LM, TINY_LM_ONNX
from pocketlm.settings import REPO_ROOT, hub_dir, runs_dir

ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate_configs/cpu.yaml"]


@dataclass(frozen=True)
class Step:
    title: str
    command: list[str]
    output: Callable[[], Path]
    """Where the step's result lands (a published repo folder, a prepared data set...); it is skipped when that exists."""


def published(repo_id: str) -> Callable[[], Path]:
    return lambda: hub_dir() / repo_id


def in_runs(*parts: str) -> Callable[[], Path]:
    return lambda: runs_dir().joinpath(*parts)


STEPS: list[Step] = [
    # Pretraining lab: corpus → tokenizer + chunks → tiny LM (demo preset: ~4 CPU-minutes; `--preset quick` is
    # the real run) → published pocketlm/tiny-lm with its model card → generation report.
    Step("Prepare the corpus (clean, BPE tokenizer, 512-token chunks)", [sys.executable, "training_scripts/prepare_corpus.py"],
         in_runs("corpus", "stats.json")),
    Step("Pretrain the tiny LM and publish pocketlm/tiny-lm (demo preset)",
         [*ACCELERATE, "training_scripts/pretrain.py", "--preset", "demo"], published(TINY_LM)),
    Step("Generation report of pocketlm/tiny-lm", [sys.executable, "training_scripts/generation_report.py"],
         in_runs("generation_report", "report.md")),
    Step("Export the tiny LM to ONNX with its KV cache (fp32 + int8)", [sys.executable, "training_scripts/export_lm_onnx.py"], published(TINY_LM_ONNX)),
    Step("Fine-tune the QA model on SQuAD (demo preset)", [*ACCELERATE, "training_scripts/finetune_qa.py", "--preset", "demo"], published(MINILM_SQUAD)),
    Step("Export the QA model to ONNX + int8 (demo preset)", [sys.executable, "training_scripts/export_qa_onnx.py", "--preset", "demo"], published(MINILM_SQUAD_ONNX)),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the steps and which are already done, then exit")
    args = parser.parse_args(argv)
    for i, step in enumerate(STEPS, 1):
        done = step.output().exists()
        print(f"[{i}/{len(STEPS)}] {step.title}: {'done' if done else 'to do'}", flush=True)
        if args.list or done:
            continue
        started = time.perf_counter()
        result = subprocess.run(step.command, cwd=REPO_ROOT)
        if result.returncode != 0:
            print(f"step failed ({result.returncode}): {' '.join(step.command)}", file=sys.stderr)
            return result.returncode
        print(f"    done in {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
