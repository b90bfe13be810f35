"""The main job: build every missing artifact with the demo presets, publish it, then open the suite.

Each step is a command a user could type themselves (an `accelerate launch` of a training script, an
export...), run in order; a step whose artifact already exists is skipped, so a second run reuses
everything and opens in seconds. The last step serves the Gradio suite and the REST API until Ctrl-C.

    python -m pocketlm.demo                 # = make demo; --port/--host for the suite
    python -m pocketlm.demo --list          # the plan, and what is already done
    python -m pocketlm.demo --no-launch     # build only
    python -m pocketlm.demo --with-classifier   # also the fine-tuning lab's SST-2 classifier (not served by a Space)

Progress: each step is announced with its number and the time so far, its own output (Trainer and tqdm
bars) follows, and its duration is printed when it ends; `runs/demo/last_run.json` keeps the timings.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pocketlm import MINILM_SQUAD, MINILM_SQUAD_ONNX, MINILM_SST2_PEFT, RAG_INDEX, TINY_LM, TINY_LM_ONNX, TINY_LM_RAG_LORA
from pocketlm.settings import REPO_ROOT, hub_dir, runs_dir

ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate_configs/cpu.yaml"]


@dataclass(frozen=True)
class Step:
    title: str
    command: list[str]
    output: Callable[[], Path] | None
    """Where the step's result lands (a published repo folder, a prepared data set...); it is skipped when that
    exists. None: the step always runs (the suite at the end)."""
    serves: bool = field(default=False, kw_only=True)
    """A server that runs until Ctrl-C: it gets the demo's `--host`/`--port`, and `--no-launch` leaves it out."""

    def done(self) -> bool:
        return self.output is not None and self.output().exists()


def published(repo_id: str) -> Callable[[], Path]:
    return lambda: hub_dir() / repo_id


def in_runs(*parts: str) -> Callable[[], Path]:
    return lambda: runs_dir().joinpath(*parts)


STEPS: list[Step] = [
    # Pretraining lab: corpus → tokenizer + chunks → tiny LM (demo preset: a 2.5-minute budget; `--preset quick`
    # is the real run) → published pocketlm/tiny-lm with its model card. The generation report
    # (`training_scripts/generation_report.py`, 68 s measured) is left out: the suite does not use it.
    # The demo presets are sized for the 20-minute budget with room to spare, because a shared machine's speed
    # varies by up to a third between days (benchmarks/demo_fresh.py; docs/spaces.md).
    Step("Prepare the corpus (clean, BPE tokenizer, 512-token chunks)", [sys.executable, "training_scripts/prepare_corpus.py"],
         in_runs("corpus", "stats.json")),
    Step("Pretrain the tiny LM and publish pocketlm/tiny-lm (demo preset)",
         [*ACCELERATE, "training_scripts/pretrain.py", "--preset", "demo"], published(TINY_LM)),
    Step("Export the tiny LM to ONNX with its KV cache (fp32 + int8)", [sys.executable, "training_scripts/export_lm_onnx.py"], published(TINY_LM_ONNX)),
    Step("Fine-tune the QA model on SQuAD (demo preset)", [*ACCELERATE, "training_scripts/finetune_qa.py", "--preset", "demo"], published(MINILM_SQUAD)),
    Step("Export the QA model to ONNX + int8 (demo preset)", [sys.executable, "training_scripts/export_qa_onnx.py", "--preset", "demo"], published(MINILM_SQUAD_ONNX)),
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
    Step("Open the suite: the four Spaces and the REST API in one process (Ctrl-C stops it)",
         [sys.executable, "spaces/suite/app.py"], None, serves=True),
]


# Fine-tuning lab (`--with-classifier`): LoRA + adapters + AWP + mixout on 2,000 SST-2 sentences (quick preset,
# ~4 CPU-minutes; `--preset full` is the published run), then the test-split report. No Space serves the
# classifier, so the default demo leaves it out and stays within its 20-minute budget from a fresh clone.
CLASSIFIER_STEPS: list[Step] = [
    Step("Fine-tune the SST-2 classifier and publish pocketlm/minilm-sst2-peft (quick preset)",
         [*ACCELERATE, "training_scripts/finetune_classifier.py", "--preset", "quick"], published(MINILM_SST2_PEFT)),
    Step("Classification report of pocketlm/minilm-sst2-peft on the SST-2 test split",
         [sys.executable, "training_scripts/evaluate_classifier.py", "--split", "test"],
         in_runs("evaluate", "minilm-sst2-peft", "classification_report_test.md")),
]


def duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the steps and which are already done, then exit")
    parser.add_argument("--no-launch", action="store_true", help="build what is missing, then exit instead of serving")
    parser.add_argument("--host", default="127.0.0.1", help="where the suite listens (default: %(default)s)")
    parser.add_argument("--port", type=int, default=7860, help="(default: %(default)s)")
    parser.add_argument("--with-classifier", action="store_true",
                        help="also fine-tune and evaluate the SST-2 classifier (pocketlm/minilm-sst2-peft) before the suite")
    args = parser.parse_args(argv)

    builds, serves = [s for s in STEPS if not s.serves], [s for s in STEPS if s.serves]
    plan = [*builds, *(CLASSIFIER_STEPS if args.with_classifier else ()), *serves]
    steps = [step for step in plan if not (args.no_launch and step.serves)]
    todo = [step for step in steps if not step.done()]
    print(f"pocketlm demo: {len(steps)} steps, {len(steps) - len(todo)} already done", flush=True)
    for number, step in enumerate(steps, 1):
        print(f"  [{number}/{len(steps)}] {'done ' if step.done() else 'to do'}  {step.title}", flush=True)
    if args.list:
        return 0

    started, timings = time.perf_counter(), []
    for number, step in enumerate(steps, 1):
        if step.done():
            continue
        command = [*step.command, "--host", args.host, "--port", str(args.port)] if step.serves else step.command
        if step.serves:
            _record(timings, started)
        print(f"\n━━ [{number}/{len(steps)}] {step.title} — {duration(time.perf_counter() - started)} so far\n"
              f"   $ {' '.join(command)}", flush=True)
        step_started = time.perf_counter()
        try:
            result = subprocess.run(command, cwd=REPO_ROOT)
        except KeyboardInterrupt:
            print(f"\n{'stopped' if step.serves else 'interrupted'}: run it again to go on (finished steps are kept)",
                  file=sys.stderr)
            return 130
        if result.returncode != 0:
            print(f"step {number} failed ({result.returncode}): {' '.join(command)}", file=sys.stderr)
            return result.returncode
        if step.serves:
            return 0
        timings.append({"step": step.title, "seconds": round(time.perf_counter() - step_started, 1)})
        print(f"━━ [{number}/{len(steps)}] done in {duration(timings[-1]['seconds'])} "
              f"({duration(time.perf_counter() - started)} so far)", flush=True)
    _record(timings, started)
    return 0


def _record(timings: list[dict], started: float) -> None:
    """Keep the build's timings (`runs/demo/last_run.json`) and print them, before the suite takes over."""
    if not timings:
        return
    from pocketlm.io import write_json

    total = time.perf_counter() - started
    write_json(runs_dir() / "demo" / "last_run.json", {"steps": timings, "total_seconds": round(total, 1)})
    print(f"\nbuilt {len(timings)} artifact(s) in {duration(total)}:", flush=True)
    for timing in timings:
        print(f"  {duration(timing['seconds']):>14}  {timing['step']}", flush=True)
    timings.clear()


if __name__ == "__main__":
    sys.exit(main())
