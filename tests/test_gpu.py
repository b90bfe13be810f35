"""The GPU configs on a real CUDA GPU: NCCL data parallelism and FSDP on the LM, as far as one GPU allows.

Skipped where torch sees no CUDA GPU (CI has none). On a machine with one:

    python -m pytest tests/test_gpu.py -v -s

What one GPU allows: NCCL runs one process per GPU, so `multi_gpu_ddp.yaml` and `fsdp.yaml` run here with
`--num_processes 1` — the real NCCL process group, DDP and FSDP2 wrappers, FSDP's full-state-dict gather on save
and load — and the launch of 2 processes on one GPU is shown to fail (NCCL's own error, and the one-line refusal
the training scripts give first). What only several GPUs can show (gradients averaged across GPUs, shards on
different devices) stays untested: the CPU tests (tests/test_distributed.py) cover the averaging over gloo.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from launching import DRIVER, REPO, launch, launch_env, pretrain_args, recorded_losses

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DDP = "accelerate_configs/multi_gpu_ddp.yaml"
FSDP = "accelerate_configs/fsdp.yaml"
ONE_GPU = ["--num_processes", "1"]


def _run(config: str, corpus: Path, tmp: Path, *extra: str) -> dict:
    """The test driver (pretraining as the script runs it) under `config` on the GPU; fp32 (`--mixed_precision no`
    overrides the config's bf16) so that the runs compare closely."""
    record = tmp / "record"
    record.mkdir(parents=True, exist_ok=True)
    result = launch([*ONE_GPU, DRIVER, "--record_dir", str(record), *pretrain_args(corpus, tmp / "out", 4), *extra],
                    launch_env(tmp), config=config, timeout=600)
    return {"record": record, "out": tmp / "out", "hub": tmp / "hub" / "pocketlm" / "tiny-lm", "result": result}


@pytest.fixture(scope="module")
def ddp_run(launch_corpus, tmp_path_factory):
    return _run(DDP, launch_corpus, tmp_path_factory.mktemp("ddp"))


@pytest.fixture(scope="module")
def fsdp_run(launch_corpus, tmp_path_factory):
    return _run(FSDP, launch_corpus, tmp_path_factory.mktemp("fsdp"))


def test_the_ddp_config_forms_an_nccl_group_on_the_gpu(tmp_path):
    result = launch([*ONE_GPU, "-m", "pocketlm.training.distributed"], launch_env(tmp_path), config=DDP)
    assert "process 0/1: MULTI_GPU on cuda:0, backend nccl, all-reduce of ones = 1" in result.stdout, result.stdout


def test_two_processes_on_one_gpu_are_refused_in_one_line(tmp_path):
    """accelerate would put the second process on cuda:1, which does not exist; the check stops both first."""
    result = launch(["--num_processes", "2", "-m", "pocketlm.training.distributed"],
                    launch_env(tmp_path), config=DDP, check=False)
    assert result.returncode != 0
    assert ("error: 2 processes were started on this machine, but it has 1 GPU(s): data parallelism over NCCL runs "
            "one process per GPU. Launch with --num_processes 1") in result.stderr, result.stderr[-3000:]


TWO_RANKS_ON_ONE_GPU = """
import os, torch, torch.distributed as dist
torch.cuda.set_device(0)
dist.init_process_group("nccl", device_id=torch.device("cuda", 0))
x = torch.ones(1, device="cuda")
dist.all_reduce(x)
torch.cuda.synchronize()
print(f"rank {dist.get_rank()}: all-reduce = {x.item():g}", flush=True)
dist.destroy_process_group()
"""


def test_nccl_itself_refuses_two_ranks_on_one_gpu(tmp_path):
    """Why the check exists: two ranks put on the same GPU by hand (no accelerate, no pocketlm) do not form a
    working NCCL group. Prints what NCCL says, for docs/scaling.md."""
    script = tmp_path / "two_ranks.py"
    script.write_text(TWO_RANKS_ON_ONE_GPU)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    try:
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=90,
                                env={**launch_env(tmp_path), "NCCL_DEBUG": "WARN"})
    except subprocess.TimeoutExpired as hang:
        print("NCCL two ranks on one GPU: hung for 90 s;", (hang.stderr or b"")[-1500:])
        return  # a hang is as much a failure to form the group as an error
    errors = [line for line in result.stderr.splitlines() if "Duplicate GPU" in line or "ncclInvalidUsage" in line]
    print("NCCL two ranks on one GPU: exit", result.returncode, "|", *(errors[:2] or [result.stderr[-1500:]]))
    assert result.returncode != 0, result.stdout


def test_fsdp_on_one_gpu_follows_the_ddp_run(ddp_run, fsdp_run):
    """Same seed, data and fp32 arithmetic: FSDP2 over one process shards nothing, so its losses are the DDP run's
    up to the kernels' float rounding (1e-4 relative: measured differences are orders of magnitude smaller)."""
    ddp, fsdp = recorded_losses(ddp_run["record"]), recorded_losses(fsdp_run["record"])
    assert sorted(fsdp) == sorted(ddp) == list(range(1, 9))
    for step, loss in ddp.items():
        assert fsdp[step] == pytest.approx(loss, rel=1e-4), (step, ddp, fsdp)
    # The FSDP run really ran under FSDP: accelerate wrote its checkpoint the FSDP way (the gathered full state dict).
    assert (fsdp_run["out"] / "last" / "pytorch_model_fsdp.bin").is_file()
    assert not (ddp_run["out"] / "last" / "pytorch_model_fsdp.bin").exists()
    print("largest relative deviation, FSDP vs DDP:", max(abs(fsdp[s] - ddp[s]) / ddp[s] for s in ddp))


@pytest.mark.parametrize("which", ["ddp", "fsdp"])
def test_gpu_artifacts_load_with_transformers_and_match_the_in_memory_model(which, ddp_run, fsdp_run, launch_corpus):
    """The best checkpoint and the published folder (under FSDP gathered from the shards into one safetensors file)
    load with plain transformers and give the logits the in-memory model gave at the end of training."""
    from transformers import AutoModelForCausalLM

    run = {"ddp": ddp_run, "fsdp": fsdp_run}[which]
    recorded = torch.tensor(json.loads((run["record"] / "losses.json").read_text())["logits"])
    probe = json.loads((launch_corpus / "validation.jsonl").read_text().splitlines()[0])["input_ids"]
    for folder in (run["out"] / "best", run["hub"]):
        assert (folder / "model.safetensors").is_file()
        model = AutoModelForCausalLM.from_pretrained(folder).cuda().eval()
        with torch.no_grad():
            logits = model(torch.tensor([probe[:16], probe[16:32]], device="cuda")).logits.cpu()
        torch.testing.assert_close(logits, recorded, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("config", [DDP, FSDP])
def test_a_gpu_checkpoint_resumes_to_the_uninterrupted_losses(config, ddp_run, fsdp_run, launch_corpus, tmp_path):
    """Stop right after the step-4 checkpoint (under FSDP: the full state dict, gathered), launch again: steps 5-8
    give the uninterrupted run's losses (GPU kernels are not bit-reproducible run to run: 1e-5 relative)."""
    uninterrupted = recorded_losses((ddp_run if config == DDP else fsdp_run)["record"])
    first = _run(config, launch_corpus, tmp_path, "--publish", "false", "--stop_after_step", "4")
    progress = json.loads((first["out"] / "last" / "progress.json").read_text())
    assert progress["batches_done"] == 4 and not progress["done"]
    _run(config, launch_corpus, tmp_path, "--publish", "false")
    resumed = recorded_losses(tmp_path / "record")
    assert sorted(resumed) == [5, 6, 7, 8]
    for step, loss in resumed.items():
        assert loss == pytest.approx(uninterrupted[step], rel=1e-5), (step, resumed, uninterrupted)
