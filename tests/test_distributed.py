"""Multi-process training on the CPU: 2 processes over gloo, launched by `accelerate launch` as a user would.

What runs where (the whole file is CPU-only; FSDP is refused on the CPU, see `test_fsdp_on_the_cpu_is_refused`):

* pretraining (`pocketlm.training.pretrain`, the hand-written accelerate loop) in full: DDP 2 × batch b against
  1 × batch 2b, evaluation gathered across processes, resume from a DDP checkpoint, the published artifact
  loaded with plain transformers, and which process writes;
* the Trainer-based QA, classifier and generator LoRA scripts, one 2-process run each (the classifier's
  published adapter reproduces the run's test accuracy, the LoRA's its ROUGE-L);
* the query adapter's own loop: 2 processes × half of each batch against 1 process × the whole batch;
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
from launching import CPU2, DRIVER, REPO, launch, launch_env, pretrain_args, recorded_losses


@pytest.fixture(scope="module")
def one_process_reference(launch_corpus, tmp_path_factory):
    """1 process × batch 4, in a subprocess (plain python: no launcher)."""
    tmp = tmp_path_factory.mktemp("ref")
    record = tmp / "record"
    record.mkdir()
    args = [sys.executable, DRIVER, "--record_dir", str(record), *pretrain_args(launch_corpus, tmp / "out", 4), "--publish", "false"]
    result = subprocess.run(args, cwd=REPO, env=launch_env(tmp), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return recorded_losses(record)


@pytest.fixture(scope="module")
def ddp_run(launch_corpus, tmp_path_factory):
    """2 processes × batch 2 (the same 4 chunks per step), launched with the CPU multi-process config; publishes."""
    tmp = tmp_path_factory.mktemp("ddp")
    record = tmp / "record"
    record.mkdir()
    result = launch([DRIVER, "--record_dir", str(record), *pretrain_args(launch_corpus, tmp / "out", 2)], launch_env(tmp))
    return {"tmp": tmp, "record": record, "out": tmp / "out", "hub": tmp / "hub" / "pocketlm" / "tiny-lm", "result": result}


@pytest.mark.slow
def test_ddp_two_processes_follow_the_one_process_loss_trajectory(ddp_run, one_process_reference):
    """Same seed, same data order (accelerate's seedable sampler shards each global batch of 4 into 2 + 2), same
    mean loss and averaged gradient: only the floating-point summation order differs (the all-reduce adds two
    half-batch gradients where one process sums the whole batch); measured: 1.8e-7 relative at most over the 8
    steps. 1e-5 leaves ~50× room for other CPUs' kernels, and is far below what a real fault moves (a process
    training alone on its half-batch, or summed instead of averaged gradients, is a different optimisation)."""
    ddp = recorded_losses(ddp_run["record"])
    assert sorted(ddp) == sorted(one_process_reference) == list(range(1, 9))
    for step, loss in one_process_reference.items():
        assert ddp[step] == pytest.approx(loss, rel=1e-5), (step, ddp, one_process_reference)
    # Step 1 runs the same initial weights on the same 4 chunks: any difference there is data order, not rounding.
    assert ddp[1] == pytest.approx(one_process_reference[1], rel=1e-6)
    deviation = max(abs(ddp[s] - one_process_reference[s]) / one_process_reference[s] for s in ddp)
    print(f"largest relative deviation over 8 steps: {deviation:.2e}")


@pytest.mark.slow
def test_ddp_evaluation_counts_every_validation_chunk_once(ddp_run, launch_corpus):
    """7 validation chunks in batches of 2 over 2 processes: accelerate pads the last round with a repeated chunk,
    `gather_for_metrics` drops it. The token count is exact and the loss equals a one-process recomputation
    from the published weights (plain transformers) on the same 7 chunks."""
    import torch
    from transformers import AutoModelForCausalLM

    best = json.loads((ddp_run["out"] / "best" / "best_metrics.json").read_text())
    assert best["validation_tokens"] == 7 * 63  # 63 predicted tokens per 64-token chunk
    rows = [json.loads(line)["input_ids"] for line in (launch_corpus / "validation.jsonl").read_text().splitlines()[:7]]
    model = AutoModelForCausalLM.from_pretrained(ddp_run["hub"]).eval()
    ids = torch.tensor(rows)
    with torch.no_grad():
        logits = model(ids).logits
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="sum")
    assert best["eval_loss"] == pytest.approx(nll.item() / (7 * 63), rel=1e-4)


@pytest.mark.slow
def test_ddp_artifact_loads_with_transformers_and_matches_the_in_memory_model(ddp_run, launch_corpus):
    """The best checkpoint and the published folder of the 2-process run, loaded by plain transformers, give the
    logits the in-memory model gave at the end of training (the run ends on its best step)."""
    import torch
    from transformers import AutoModelForCausalLM

    recorded = torch.tensor(json.loads((ddp_run["record"] / "losses.json").read_text())["logits"])
    probe = json.loads((launch_corpus / "validation.jsonl").read_text().splitlines()[0])["input_ids"]
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


@pytest.mark.slow
def test_ddp_checkpoint_resumes_to_the_uninterrupted_losses(ddp_run, launch_corpus, tmp_path):
    """Stop both processes right after the step-4 checkpoint, launch again: steps 5-8 give the uninterrupted run's
    losses (model, optimizer, sampler position and each process's RNG come back from `last/`). Rank 1 writes its
    part of each checkpoint a second late: the checkpoint is swapped in only once every process has written it."""
    record = tmp_path / "record"
    record.mkdir()
    args = [DRIVER, "--record_dir", str(record), *pretrain_args(launch_corpus, tmp_path / "out", 2), "--publish", "false",
            "--delay_other_ranks_save_s", "1"]
    launch([*args, "--stop_after_step", "4"], launch_env(tmp_path))
    progress = json.loads((tmp_path / "out" / "last" / "progress.json").read_text())
    assert progress["batches_done"] == 4 and not progress["done"]
    launch(args, launch_env(tmp_path))
    resumed, uninterrupted = recorded_losses(record), recorded_losses(ddp_run["record"])
    assert sorted(resumed) == [5, 6, 7, 8]
    for step, loss in resumed.items():
        assert loss == pytest.approx(uninterrupted[step], rel=1e-6), (step, resumed, uninterrupted)


@pytest.mark.slow
@pytest.mark.parametrize("flags,message", [
    (["--multi_gpu", "--num_processes", "2"], "2 processes were started for GPUs (--multi_gpu / multi_gpu_ddp.yaml), "
                                              "but this machine has none"),
    (["--cpu", "--num_processes", "2"], "accelerate launch was asked for 2 processes but started one"),
    (["--config_file", "accelerate_configs/fsdp.yaml"], "FSDP was asked for 2 processes on the CPU, but accelerate "
                                                        "shards only on GPUs"),
])
def test_launches_that_would_not_distribute_are_refused(flags, message, tmp_path):
    """Without the check: `--multi_gpu` gives 2 independent 1-process runs, `--cpu` one process, and FSDP on the CPU
    plain DDP (accelerate 1.15 enters FSDP only from a GPU distributed type). Each now stops with one line."""
    result = launch([*flags, "--main_process_port", "0", "-m", "pocketlm.training.distributed"], launch_env(tmp_path),
                    config=None, check=False)
    assert result.returncode != 0
    assert f"error: {message}" in result.stderr and "accelerate_configs/cpu_multiprocess.yaml" in result.stderr
    assert "Traceback" not in result.stderr.split("error:")[0][-200:]


@pytest.mark.slow
def test_cpu_multiprocess_config_forms_one_gloo_group(tmp_path):
    result = launch(["-m", "pocketlm.training.distributed"], launch_env(tmp_path))
    lines = sorted(line for line in result.stdout.splitlines() if line.startswith("process "))
    assert lines == [f"process {i}/2: MULTI_CPU on cpu:0, backend gloo, all-reduce of ones = 2" for i in range(2)], result.stdout


def test_one_output_folder_holds_one_run(tmp_path):
    from pocketlm.training.distributed import OutputDirBusy, OutputDirLock

    with OutputDirLock(tmp_path / "out"):
        with pytest.raises(OutputDirBusy, match=rf"out is in use by another run \(pid {os.getpid()} on .+, since .+: .+\); "
                                                 "wait for it to finish or pass another --output_dir"):
            OutputDirLock(tmp_path / "out").__enter__()
        # another rank of the same launch does not lock (it is the same run)
        with OutputDirLock(tmp_path / "out", environ={"RANK": "1"}):
            pass
    with OutputDirLock(tmp_path / "out"):  # released at exit (and by the kernel if the process dies)
        pass


@pytest.mark.slow
def test_a_second_pretraining_run_on_a_busy_folder_stops_in_one_line(launch_corpus, tmp_path):
    from pocketlm.training.distributed import OutputDirLock

    with OutputDirLock(tmp_path / "out"):
        result = subprocess.run([sys.executable, "training_scripts/pretrain.py", "--preset", "smoke", "--data_dir", str(launch_corpus),
                                 "--output_dir", str(tmp_path / "out")], cwd=REPO, env=launch_env(tmp_path),
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'out'} is in use by another run (pid {os.getpid()} on {os.uname().nodename}, "
        f"since {json.loads((tmp_path / 'out' / '.pocketlm-run.lock').read_text())['started']}: "
        f"{' '.join(sys.argv)}); wait for it to finish or pass another --output_dir"]
    assert not (tmp_path / "out" / "last").exists()


def test_launch_check_rules():
    """The decision table, on requests parsed from the real config files by accelerate's own launcher code."""
    from pocketlm.training.distributed import LaunchError, check_launch, parse_launch_command

    def request(*launch):
        return parse_launch_command(["/venv/bin/accelerate", "launch", *launch, "train.py", "--flag"])

    cpu2 = request("--config_file", CPU2)
    assert (cpu2.num_processes, cpu2.use_cpu, cpu2.multi_gpu) == (2, True, True)
    environ = {"WORLD_SIZE": "2"}
    assert check_launch(cpu2, environ, gpus=0) == 2 and environ["ACCELERATE_USE_CPU"] == "true"
    gpu2 = request("--config_file", "accelerate_configs/multi_gpu_ddp.yaml")
    assert check_launch(gpu2, {"WORLD_SIZE": "2"}, gpus=2) == 2
    with pytest.raises(LaunchError, match="this machine has none"):
        check_launch(gpu2, {"WORLD_SIZE": "2"}, gpus=0)
    with pytest.raises(LaunchError, match=r"2 processes were started on this machine, but it has 1 GPU\(s\): .+ "
                                          r"Launch with --num_processes 1, or with --config_file "):
        check_launch(gpu2, {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}, gpus=1)
    # two machines of one GPU each: 2 processes in all, one on each
    assert check_launch(gpu2, {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1"}, gpus=1) == 2
    fsdp1 = request("--config_file", "accelerate_configs/fsdp.yaml", "--num_processes", "1")
    assert check_launch(fsdp1, {"WORLD_SIZE": "1"}, gpus=1) == 1  # FSDP on one GPU: no sharding, but it runs
    assert check_launch(request("--config_file", "accelerate_configs/cpu.yaml"), {}, gpus=0) == 1
    assert check_launch(None, {}, gpus=0) == 1  # started by python, not by accelerate launch
    assert parse_launch_command(["python", "train.py"]) is None
    assert parse_launch_command([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "3", "--multi_gpu",
                                 "x.py"]).num_processes == 3


@pytest.mark.slow
def test_qa_trainer_script_runs_on_two_processes(tmp_path):
    """finetune_qa.py (transformers' Trainer) under the CPU multi-process config: the 2 steps of batch 8 cover twice
    the windows one process would (epoch 0.5, not 0.25), one process scores and publishes, and the published
    folder loads with plain transformers."""
    from transformers import AutoModelForQuestionAnswering

    result = launch(["training_scripts/finetune_qa.py", "--preset", "smoke", "--output_dir", str(tmp_path / "qa"),
                      "--output_repo", "pocketlm/qa-2proc"], launch_env(tmp_path))
    assert result.stdout.count("published pocketlm/qa-2proc") == 1 and result.stdout.count("'exact_match'") == 1
    state = json.loads((tmp_path / "qa" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["epoch"] == 0.5
    model = AutoModelForQuestionAnswering.from_pretrained(tmp_path / "hub" / "pocketlm" / "qa-2proc")
    assert model.config.qa_max_length == 128


@pytest.mark.slow
def test_classifier_script_runs_on_two_processes(tmp_path):
    """finetune_classifier.py (Trainer + LoRA, adapters, AWP, mixout) under the CPU multi-process config: 32 sentences
    in batches of 8 per process are 2 steps an epoch, not 4; the 25 validation and test sentences (uneven over 2
    processes) are each scored once; one process publishes, and the published adapter, loaded again in this
    process, predicts the test split exactly as the run reported."""
    from transformers import AutoModel, AutoTokenizer

    from pocketlm import BASE_ENCODER
    from pocketlm.hub import resolve
    from pocketlm.models.peft_classifier import load_classifier

    encoder = tmp_path / "minilm-1layer"
    AutoModel.from_pretrained(resolve(BASE_ENCODER), num_hidden_layers=1).save_pretrained(encoder)
    AutoTokenizer.from_pretrained(resolve(BASE_ENCODER)).save_pretrained(encoder)
    out = tmp_path / "classifier"
    result = launch(["training_scripts/finetune_classifier.py", "--model_name_or_path", str(encoder), "--dataset", "sst2",
                      "--max_train_samples", "32", "--max_eval_samples", "25", "--num_train_epochs", "1",
                      "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "4", "--output_dir", str(out),
                      "--repo_id", "pocketlm/sst2-2proc", "--disable_tqdm", "true"], launch_env(tmp_path))
    assert result.stdout.count("published pocketlm/sst2-2proc") == 1, result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_steps"] == 2 and summary["awp_steps"] > 0
    for split in ("validation", "test"):
        assert json.loads((out / f"classification_report_{split}.json").read_text())["examples"] == 25

    import torch

    from pocketlm.data.classification import ClassificationDataArguments, load_tokenized_splits, padding_collator

    model, tokenizer, _ = load_classifier(str(tmp_path / "hub" / "pocketlm" / "sst2-2proc"))
    splits, _ = load_tokenized_splits(ClassificationDataArguments(max_train_samples=32, max_eval_samples=25), tokenizer,
                                      ("test",), seed=42)  # the run's seed: the same 25 sentences
    batch = padding_collator(tokenizer)(list(splits["test"]))
    labels = batch.pop("labels")
    with torch.no_grad():
        predictions = model(**batch).logits.argmax(-1)
    assert (predictions == labels).float().mean().item() == pytest.approx(summary["test"]["accuracy"])


@pytest.mark.slow
def test_generator_lora_script_runs_on_two_processes(tiny_lm_repo, tmp_path):
    """run_lora_finetune.py --preset smoke (Trainer + a peft LoRA) under the CPU multi-process config: 4 pairs in
    batches of 2 per process are 1 step an epoch, not 2 (3 epochs: 3 steps); one process reports, writes and
    publishes; the published LoRA, loaded with plain peft onto its base, answers the held-out pairs with exactly
    the ROUGE-L the run measured on its in-memory model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pocketlm.hub import resolve
    from pocketlm.rag.generator import generate_answers
    from pocketlm.rag.lora_finetune import read_pairs, rouge_l

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}  # the session's test hub holds the base
    out = tmp_path / "lora"
    result = launch(["training_scripts/run_lora_finetune.py", "--preset", "smoke", "--output_dir", str(out),
                      "--repo_id", "pocketlm/rag-lora-2proc"], env)
    assert result.stdout.count("before fine-tuning: ROUGE-L") == 1 and result.stdout.count("seed 0: ROUGE-L") == 1
    state = json.loads((out / "seed-0" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and state["epoch"] == 3
    results = json.loads((out / "results.json").read_text())
    assert results["pairs"] == {"train": 4, "held_out": 4}

    folder = Path(resolve("pocketlm/rag-lora-2proc"))
    base = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(resolve(base)), folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    held_out = read_pairs(out / "pairs.json")[1]
    answers = generate_answers(model, tokenizer, [p.prompt for p in held_out])
    assert rouge_l(answers, [p.answer for p in held_out]) == pytest.approx(results["after"][0]["rougeL"])


@pytest.mark.slow
def test_query_adapter_script_on_two_processes_follows_one_process(tmp_path):
    """train_query_adapter.py (a plain torch loop under DDP) on 2 CPU processes: each takes half of every batch of
    64, and the epoch losses and held-out MRR follow the 1-process run with batch 64 (the same float32 sums in
    another order: 1e-4 relative); only the main process writes, and the saved adapter loads and scores as reported."""
    import numpy as np

    from pocketlm.rag.query_adapter import QueryAdapter

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}  # embeddings cached by the first run
    args = ["training_scripts/train_query_adapter.py", "--max_articles", "3", "--held_out_fraction", "0.34",
            "--epochs", "3", "--batch_size", "64", "--measure_on_dev", "false"]
    one = subprocess.run([sys.executable, *args, "--output_dir", str(tmp_path / "one")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch([*args, "--output_dir", str(tmp_path / "two")], env)
    assert two.stdout.count("best held-out epoch") == 1

    histories = [json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("one", "two")]
    assert [r["step"] for r in histories[1]] == [0, 1, 2, 3]
    for alone, split in zip(*histories, strict=True):  # loss (after step 0), held-out recall@1/5/10 and MRR@10
        assert split.keys() == alone.keys() and "eval_mrr@10" in alone
        assert split == pytest.approx(alone, rel=1e-4), (alone, split)
    adapters = [QueryAdapter.load(tmp_path / run) for run in ("one", "two")]
    probe = np.random.default_rng(0).standard_normal((4, adapters[0].dim)).astype(np.float32)
    probe /= np.linalg.norm(probe, axis=1, keepdims=True)
    assert np.allclose(adapters[0].transform(probe), adapters[1].transform(probe), atol=1e-4)
    assert adapters[1].up.weight.abs().sum() > 0  # trained: the adapter starts as the identity
