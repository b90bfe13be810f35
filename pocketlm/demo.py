"""The main job: build every missing artifact with the demo presets, publish it, then open the suite.

Each step is a command a user could type themselves (an `accelerate launch` of a training script, an
export...), run in order; a step whose artifact already exists is skipped, so a second run reuses
everything and opens in seconds. With the Hub reachable (`HF_HUB_OFFLINE=0`), every artifact is first looked
for on the Hub under the chosen namespace (`--namespace OWNER`, else `POCKETLM_NAMESPACE`, else `pocketlm`):
what exists there is downloaded into the Hugging Face cache instead of being trained, and a step that only
prepares inputs for artifacts already there (the corpus, the query adapter) is skipped too. The last step
serves the Gradio suite and the REST API until Ctrl-C.

    python -m pocketlm.demo                 # = make demo; --port/--host for the suite
    python -m pocketlm.demo --list          # the plan, and what is already done
    python -m pocketlm.demo --no-launch     # build only
    python -m pocketlm.demo --with-classifier   # also the fine-tuning lab's SST-2 classifier (not served by a Space)
    HF_HUB_OFFLINE=0 python -m pocketlm.demo --namespace alice   # download alice/tiny-lm... where they exist

Progress: each step is announced with its number and the time so far, its own output (Trainer and tqdm
bars) follows, and its duration is printed when it ends; `runs/demo/last_run.json` keeps the timings.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from pocketlm import MINILM_SQUAD, MINILM_SQUAD_ONNX, MINILM_SST2_PEFT, RAG_INDEX, TINY_LM, TINY_LM_ONNX, TINY_LM_RAG_LORA
from pocketlm.artifacts import DEFAULT_NAMESPACE, NAMESPACE_VAR
from pocketlm.hub import in_hf_cache, namespace_repo_id, on_the_hub, resolve
from pocketlm.settings import REPO_ROOT, hub_dir, runs_dir

ARTIFACTS = (TINY_LM, TINY_LM_ONNX, MINILM_SQUAD, MINILM_SQUAD_ONNX, RAG_INDEX, TINY_LM_RAG_LORA, MINILM_SST2_PEFT)

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
    artifact: str | None = field(default=None, kw_only=True)
    """The repo id the step publishes: found in the Hugging Face cache or on the Hub, it need not be built."""
    feeds: tuple[str, ...] = field(default=(), kw_only=True)
    """Artifacts this step only prepares inputs for: when none of them is to be built, neither is this step."""

    def done(self) -> bool:
        if self.artifact is not None and in_hf_cache(self.artifact):
            return True
        return self.output is not None and self.output().exists()

    def in_namespace(self, namespace: str) -> "Step":
        """The same step for `namespace/...` ids: inputs named by id follow, and the result is published as
        `namespace/NAME` (`--hub_model_id`)."""
        if namespace == DEFAULT_NAMESPACE:
            return self
        rename = {repo_id: namespace_repo_id(repo_id, namespace) for repo_id in ARTIFACTS}
        command = [rename.get(arg, arg) for arg in self.command]
        if self.artifact is None:
            return replace(self, command=command, feeds=tuple(rename.get(f, f) for f in self.feeds))
        artifact = rename[self.artifact]
        return replace(self, title=self.title.replace(self.artifact, artifact), command=[*command, "--hub_model_id", artifact],
                       output=published(artifact), artifact=artifact)


def published(repo_id: str) -> Callable[[], Path]:
    return lambda: hub_dir() / repo_id


def in_runs(*parts: str) -> Callable[[], Path]:
    return lambda: runs_dir().joinpath(*parts)


def publishing(title: str, command: list[str], repo_id: str) -> Step:
    """A step whose result is the published artifact `repo_id`."""
    return Step(title, command, published(repo_id), artifact=repo_id)


STEPS: list[Step] = [
    # Pretraining lab: corpus → tokenizer + chunks → tiny LM (demo preset: a 2.5-minute budget; `--preset quick`
    # is the real run) → published pocketlm/tiny-lm with its model card. The generation report
    # (`training_scripts/generation_report.py`, 68 s measured) is left out: the suite does not use it.
    # The demo presets are sized for the 20-minute budget with room to spare, because a shared machine's speed
    # varies by up to a third between days (benchmarks/demo_fresh.py; docs/spaces.md).
    Step("Prepare the corpus (clean, BPE tokenizer, 512-token chunks)", [sys.executable, "training_scripts/prepare_corpus.py"],
         in_runs("corpus", "stats.json"), feeds=(TINY_LM,)),
    publishing("Pretrain the tiny LM and publish pocketlm/tiny-lm (demo preset)",
               [*ACCELERATE, "training_scripts/pretrain.py", "--preset", "demo"], TINY_LM),
    publishing("Export the tiny LM to ONNX with its KV cache (fp32 + int8)",
               [sys.executable, "training_scripts/export_lm_onnx.py", "--model_name_or_path", TINY_LM], TINY_LM_ONNX),
    publishing("Fine-tune the QA model on SQuAD (demo preset)", [*ACCELERATE, "training_scripts/finetune_qa.py", "--preset", "demo"], MINILM_SQUAD),
    publishing("Export the QA model to ONNX + int8 (demo preset)",
               [sys.executable, "training_scripts/export_qa_onnx.py", "--preset", "demo", "--model", MINILM_SQUAD], MINILM_SQUAD_ONNX),
    Step(
        "Train the RAG query adapter (quick preset: 12 SQuAD-train articles)",
        [sys.executable, "training_scripts/train_query_adapter.py", "--preset", "quick", "--output_dir", str(runs_dir() / "query-adapter")],
        lambda: runs_dir() / "query-adapter" / "query_adapter.safetensors", feeds=(RAG_INDEX,),
    ),
    publishing(
        "Build the RAG index, flat + OPQ (quick preset: 1,013 passages)",
        [sys.executable, "training_scripts/build_rag_index.py", "--preset", "quick", "--query_adapter", str(runs_dir() / "query-adapter")],
        RAG_INDEX,
    ),
    publishing(
        "Fine-tune the RAG generator LoRA (quick preset: 200 pairs, 1 seed)",
        [*ACCELERATE, "training_scripts/run_lora_finetune.py", "--preset", "quick", "--model_name_or_path", TINY_LM],
        TINY_LM_RAG_LORA,
    ),
    Step("Open the suite: the four Spaces and the REST API in one process (Ctrl-C stops it)",
         [sys.executable, "spaces/suite/app.py"], None, serves=True),
]


# Fine-tuning lab (`--with-classifier`): LoRA + adapters + AWP + mixout on 2,000 SST-2 sentences (quick preset,
# ~4 CPU-minutes; `--preset full` is the published run), then the test-split report. No Space serves the
# classifier, so the default demo leaves it out and stays within its 20-minute budget from a fresh clone.
CLASSIFIER_STEPS: list[Step] = [
    publishing("Fine-tune the SST-2 classifier and publish pocketlm/minilm-sst2-peft (quick preset)",
               [*ACCELERATE, "training_scripts/finetune_classifier.py", "--preset", "quick"], MINILM_SST2_PEFT),
    Step("Classification report of pocketlm/minilm-sst2-peft on the SST-2 test split",
         [sys.executable, "training_scripts/evaluate_classifier.py", "--split", "test"],
         in_runs("evaluate", "minilm-sst2-peft", "classification_report_test.md")),
]


def duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


LABELS = {"done": "done ", "hub": "Hub  ", "skip": "skip ", "todo": "to do"}
"""done: built or downloaded before; Hub: downloaded from the namespace; skip: only feeds artifacts that exist."""


def plan_states(steps: list[Step]) -> tuple[dict[int, str], str | None]:
    """Each step's state (see `LABELS`), asking the Hub about the artifacts that are not here yet."""
    states = {i: "done" for i, step in enumerate(steps) if step.done()}
    missing = [step.artifact for i, step in enumerate(steps) if i not in states and step.artifact]
    found, note = on_the_hub(missing) if missing else (set(), None)
    for i, step in enumerate(steps):
        if i not in states:
            states[i] = "hub" if step.artifact in found else "todo"
    present = {step.artifact for i, step in enumerate(steps) if step.artifact and states[i] != "todo"}
    for i, step in enumerate(steps):
        if states[i] == "todo" and step.feeds and set(step.feeds) <= present:
            states[i] = "skip"
    return states, note


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the steps and which are already done, then exit")
    parser.add_argument("--no-launch", action="store_true", help="build what is missing, then exit instead of serving")
    parser.add_argument("--host", default="127.0.0.1", help="where the suite listens (default: %(default)s)")
    parser.add_argument("--port", type=int, default=7860, help="(default: %(default)s)")
    parser.add_argument("--with-classifier", action="store_true",
                        help="also fine-tune and evaluate the SST-2 classifier (pocketlm/minilm-sst2-peft) before the suite")
    parser.add_argument("--namespace", default=os.environ.get(NAMESPACE_VAR) or DEFAULT_NAMESPACE,
                        help=f"Hub owner of the artifacts to download or build (default: ${NAMESPACE_VAR}, else %(default)s)")
    args = parser.parse_args(argv)
    namespace_repo_id(TINY_LM, args.namespace)  # a malformed namespace: one line, before anything runs

    builds, serves = [s for s in STEPS if not s.serves], [s for s in STEPS if s.serves]
    plan = [*builds, *(CLASSIFIER_STEPS if args.with_classifier else ()), *serves]
    steps = [step.in_namespace(args.namespace) for step in plan if not (args.no_launch and step.serves)]
    states, note = plan_states(steps)
    on_hub = sum(state == "hub" for state in states.values())
    print(f"pocketlm demo: {len(steps)} steps, {sum(s == 'done' for s in states.values())} already done"
          + (f", {on_hub} to download from the Hub ({args.namespace}/...)" if on_hub else ""), flush=True)
    if note:
        print(f"  (building what is missing locally: {note})", flush=True)
    for number, step in enumerate(steps, 1):
        print(f"  [{number}/{len(steps)}] {LABELS[states[number - 1]]}  {step.title}", flush=True)
    if args.list:
        return 0

    env = {**os.environ, NAMESPACE_VAR: args.namespace}  # the suite loads the artifacts of this namespace too
    started, timings = time.perf_counter(), []
    for number, step in enumerate(steps, 1):
        if states[number - 1] in ("done", "skip"):
            continue
        if states[number - 1] == "hub":
            print(f"━━ [{number}/{len(steps)}] downloading {step.artifact} from the Hub", flush=True)
            resolve(step.artifact)  # into the Hugging Face cache, where every loader finds it
            continue
        command = [*step.command, "--host", args.host, "--port", str(args.port)] if step.serves else step.command
        if step.serves:
            _record(timings, started)
        print(f"\n━━ [{number}/{len(steps)}] {step.title} — {duration(time.perf_counter() - started)} so far\n"
              f"   $ {' '.join(command)}", flush=True)
        step_started = time.perf_counter()
        try:
            result = subprocess.run(command, cwd=REPO_ROOT, env=env)
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
    from pocketlm.cli import run

    run(main)
