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

from pocketlm import RAG_INDEX, TINY_LM, TINY_LM_RAG_LORA
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


STEPS: list[Step] = [
    Step("Pretrain the tiny LM (quick preset)", [*ACCELERATE, "training_scripts/pretrain.py", "--preset", "quick"], published(TINY_LM)),
    Step(
        "Train the RAG query adapter (quick preset: 12 SQuAD-train articles)",
        [sys.executable, "training_scripts/train_query_adapter.py", "--preset", "quick", "--output_dir", str(runs_dir() / "query-adapter")],
        lambda: runs_dir() / "query-adapter" / "query_adapter.safetensors",
    ),
    Step(
        "Build the RAG index, flat + OPQ (quick preset: 1,013 passages)",
        [sys.executable, "training_scripts/build_rag_index.py", "--preset", "quick", "--query_adapter", str(runs_dir() / "query-adapter")],
        published(RAG_INDEX),
    ),
    Step(
        "Fine-tune the RAG generator LoRA (quick preset: 200 pairs, 1 seed)",
        [*ACCELERATE, "training_scripts/run_lora_finetune.py", "--preset", "quick"],
        published(TINY_LM_RAG_LORA),
    ),
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
