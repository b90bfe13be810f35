"""Multi-process training on the CPU: 2 processes over gloo, launched by `accelerate launch` as a user would.

What runs where (the whole file is CPU-only; FSDP is refused on the CPU, see `test_fsdp_on_the_cpu_is_refused`):

* pretraining (`pocketlm.training.pretrain`, the hand-written accelerate loop) in full: DDP 2 × batch b against
  1 × batch 2b, evaluation gathered across processes, resume from a DDP checkpoint, the published artifact
  loaded with plain transformers, and which process writes;
* the Trainer-based QA script, one 2-process run;
* the launch checks: launches that would not distribute as asked are refused, and one output folder
  cannot hold two runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pocketlm.data import corpus_folder

REPO = Path(__file__).resolve().parents[1]
CPU2 = "accelerate_configs/cpu_multiprocess.yaml"
DRIVER = "tests/distributed_pretrain_driver.py"
# Small enough for seconds per run, big enough that steps move the loss: 8 steps, eval on 7 chunks in batches of 2
# (uneven over 2 processes: 4 batches, the last one holding a single chunk).
PRETRAIN = ["--d_model", "32", "--n_layers", "2", "--n_heads", "2", "--d_ff", "64", "--max_steps", "8",
            "--learning_rate", "3e-3", "--warmup_steps", "2", "--logging_steps", "1", "--save_steps", "4",
            "--eval_max_chunks", "7", "--per_device_eval_batch_size", "2", "--generation_prompts", "0",
            "--mixed_precision", "no", "--masking", "none", "--seed", "7"]


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "POCKETLM_HUB_DIR": str(tmp_path / "hub"),
            "POCKETLM_RUNS_DIR": str(tmp_path / "runs"), "OMP_NUM_THREADS": "1"}


def _launch(args: list[str], env: dict, config: str | None = CPU2, check: bool = True, timeout: int = 300):
    launcher = [sys.executable, "-m", "accelerate.commands.launch"] + (["--config_file", config] if config else [])
    result = subprocess.run(launcher + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The real preparation on 12 WikiText-2 articles: a 320-token BPE vocabulary, 64-token chunks."""
    from pocketlm.data.corpus import prepare_corpus, read_text_folder

    texts = tmp_path_factory.mktemp("texts")
    for path in sorted(corpus_folder().glob("*.txt"))[:12]:
        (texts / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    out = tmp_path_factory.mktemp("corpus")
    prepare_corpus(read_text_folder(texts), out, vocab_size=320, chunk_length=64, validation_ratio=0.1)
    return out


def _pretrain_args(corpus: Path, output_dir: Path, batch: int) -> list[str]:
    return [*PRETRAIN, "--data_dir", str(corpus), "--output_dir", str(output_dir),
            "--per_device_train_batch_size", str(batch)]


def _losses(record_dir: Path) -> dict[int, float]:
    return {int(k): v for k, v in json.loads((record_dir / "losses.json").read_text())["losses"].items()}


@pytest.fixture(scope="module")
def one_process_reference(corpus, tmp_path_factory):
    """1 process × batch 4, in a subprocess (plain python: no launcher)."""
    tmp = tmp_path_factory.mktemp("ref")
    record = tmp / "record"
    record.mkdir()
    args = [sys.executable, DRIVER, "--record_dir", str(record), *_pretrain_args(corpus, tmp / "out", 4), "--publish", "false"]
    result = subprocess.run(args, cwd=REPO, env=_env(tmp), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return _losses(record)


@pytest.fixture(scope="module")
def ddp_run(corpus, tmp_path_factory):
    """2 processes × batch 2 (the same 4 chunks per step), launched with the CPU multi-process config; publishes."""
    tmp = tmp_path_factory.mktemp("ddp")
    record = tmp / "record"
    record.mkdir()
    result = _launch([DRIVER, "--record_dir", str(record), *_pretrain_args(corpus, tmp / "out", 2)], _env(tmp))
    return {"tmp": tmp, "record": record, "out": tmp / "out", "hub": tmp / "hub" / "pocketlm" / "tiny-lm", "result": result}


@pytest.mark.slow
def test_ddp_two_processes_follow_the_one_process_loss_trajectory(ddp_run, one_process_reference):
    """Same seed, same data order (accelerate's seedable sampler shards each global batch of 4 into 2 + 2), same
    mean loss and averaged gradient: only the floating-point summation order differs (the all-reduce adds two
    half-batch gradients where one process sums the whole batch). 1e-3 relative is ~1000× that rounding after
    8 AdamW steps and ~50× below the loss change of one step, so wrong sharding (both processes on the same
    chunks), summed instead of averaged gradients, or a process training alone all fail it."""
    ddp = _losses(ddp_run["record"])
    assert sorted(ddp) == sorted(one_process_reference) == list(range(1, 9))
    for step, loss in one_process_reference.items():
        assert ddp[step] == pytest.approx(loss, rel=1e-3), (step, ddp, one_process_reference)
    # Step 1 runs the same initial weights on the same 4 chunks: any difference there is data order, not rounding.
    assert ddp[1] == pytest.approx(one_process_reference[1], rel=1e-6)
    deviation = max(abs(ddp[s] - one_process_reference[s]) / one_process_reference[s] for s in ddp)
    print(f"largest relative deviation over 8 steps: {deviation:.2e}")


@pytest.mark.slow
def test_ddp_evaluation_counts_every_validation_chunk_once(ddp_run, corpus):
    """7 validation chunks in batches of 2 over 2 processes: accelerate pads the last round with a repeated chunk,
    `gather_for_metrics` drops it. The token count is exact and the loss equals a one-process recomputation
    from the published weights (plain transformers) on the same 7 chunks."""
    import torch
    from transformers import AutoModelForCausalLM

    best = json.loads((ddp_run["out"] / "best" / "best_metrics.json").read_text())
    assert best["validation_tokens"] == 7 * 63  # 63 predicted tokens per 64-token chunk
    rows = [json.loads(line)["input_ids"] for line in (corpus / "validation.jsonl").read_text().splitlines()[:7]]
    model = AutoModelForCausalLM.from_pretrained(ddp_run["hub"]).eval()
    ids = torch.tensor(rows)
    with torch.no_grad():
        logits = model(ids).logits
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="sum")
    assert best["eval_loss"] == pytest.approx(nll.item() / (7 * 63), rel=1e-4)


@pytest.mark.slow
def test_ddp_artifact_loads_with_transformers_and_matches_the_in_memory_model(ddp_run, corpus):
    """The best checkpoint and the published folder of the 2-process run, loaded by plain transformers, give the
    logits the in-memory model gave at the end of training (the run ends on its best step)."""
    import torch
    from transformers import AutoModelForCausalLM

    recorded = torch.tensor(json.loads((ddp_run["record"] / "losses.json").read_text())["logits"])
    probe = json.loads((corpus / "validation.jsonl").read_text().splitlines()[0])["input_ids"]
    for folder in (ddp_run["out"] / "best", ddp_run["hub"]):
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        assert type(model).__name__ == "LlamaForCausalLM"
        with torch.no_grad():
            logits = model(torch.tensor([probe[:16], probe[16:32]])).logits
        torch.testing.assert_close(logits, recorded, rtol=1e-4, atol=1e-4)
    summary = json.loads((ddp_run["out"] / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["train_tokens"] == 8 * 4 * 64  # 2 processes × 2 chunks × 64 tokens
    assert "2 process(es) on cpu" not in ddp_run["result"].stdout  # the driver silences the loop's log


@pytest.mark.slow
def test_only_the_main_process_writes(ddp_run):
    """The audit hook saw rank 1 open nothing for writing under the output folder or the hub, except its own RNG
    state in the checkpoint (accelerate saves one per process, which resume needs)."""
    main = json.loads((ddp_run["record"] / "writes-rank0.json").read_text())
    other = json.loads((ddp_run["record"] / "writes-rank1.json").read_text())
    assert any(path.endswith("summary.json") for path in main) and any("/hub/" in path for path in main)
    assert all(Path(path).name == "random_states_1.pkl" for path in other), other
