"""One small GPU: do the training scripts fit 4 GB with fp16 + gradient accumulation, and how fast is inference?

    python benchmarks/gpu_4gb.py                      # needs one CUDA GPU; writes benchmarks/results/gpu_4gb/gpu_4gb.{json,md}

Runs the real scripts under `accelerate_configs/single_gpu_4gb.yaml` (fp16 mixed precision) with the batch ×
accumulation docs/scaling.md recommends: pretraining on the prepared corpus (a short time budget) and the PEFT
classifier (its `quick` preset) on the real MiniLM weights. Peak memory is what `nvidia-smi` shows the GPU
using above its idle level, sampled every 100 ms — the whole process, CUDA context and allocator cache included,
i.e. what must fit on a 4 GB card, not only `torch.cuda.max_memory_allocated`. Then CUDA inference latency
(batch 1, median of `--repeats`) of the QA encoder (the MiniLM) and of greedy generation with the LM that the
pretraining run just wrote (or `--lm`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from pocketlm import BASE_ENCODER, TINY_LM
from pocketlm.benchmarking import markdown_table, write_results
from pocketlm.cli import run
from pocketlm.settings import REPO_ROOT

LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate_configs/single_gpu_4gb.yaml"]


def gpu_memory_used_mib() -> int:
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def run_with_peak_memory(command: list[str], log_path: Path) -> dict:
    """Run `command`, sampling GPU memory meanwhile; the peak above the idle level before it started."""
    idle, peak, done = gpu_memory_used_mib(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], gpu_memory_used_mib())
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    with open(log_path, "w") as log:
        code = subprocess.run(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    done.set()
    sampler.join()
    if code:
        raise SystemExit(f"error: {' '.join(command[-8:])} failed (exit {code}); see {log_path}")
    return {"wall_s": round(time.perf_counter() - started, 1), "peak_gpu_mib": peak[0] - idle}


def inference_latency(qa_model: str, lm_model: str, repeats: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForQuestionAnswering

    from pocketlm.hub import resolve

    def median_ms(fn) -> float:
        for _ in range(5):
            fn()
        times = []
        for _ in range(repeats):
            torch.cuda.synchronize()
            started = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times.append(1000 * (time.perf_counter() - started))
        return round(sorted(times)[len(times) // 2], 2)

    results = {"device": torch.cuda.get_device_name(0)}
    qa = AutoModelForQuestionAnswering.from_pretrained(resolve(qa_model)).cuda().eval()
    window = torch.randint(1000, 20000, (1, 256), device="cuda")
    lm = AutoModelForCausalLM.from_pretrained(resolve(lm_model)).cuda().eval()
    prompt = torch.randint(3, lm.config.vocab_size, (1, 50), device="cuda")
    for dtype in (torch.float32, torch.float16):
        label = "fp32" if dtype == torch.float32 else "fp16"
        qa.to(dtype), lm.to(dtype)
        with torch.inference_mode():
            results[f"qa_256_tokens_{label}_ms"] = median_ms(lambda: qa(input_ids=window))
            results[f"lm_50_prompt_32_new_{label}_ms"] = median_ms(
                lambda: lm.generate(prompt, max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=0))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default=BASE_ENCODER, help="classifier / QA base (default: %(default)s)")
    parser.add_argument("--lm", default=None, help=f"causal LM for the latency part, e.g. {TINY_LM} (default: the "
                        "best checkpoint of this run's pretraining)")
    parser.add_argument("--pretrain_minutes", type=float, default=2.0, help="pretraining time budget (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=50, help="timed inference calls (default: %(default)s)")
    parser.add_argument("--output_dir", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "gpu_4gb")
    args = parser.parse_args(argv)
    try:
        gpu_memory_used_mib()
    except (OSError, subprocess.CalledProcessError):
        parser.error("needs an NVIDIA GPU with nvidia-smi")
    work = args.output_dir / "work"
    work.mkdir(parents=True, exist_ok=True)

    # Pretraining: batch 8 × accumulation 4, an effective batch of 32 chunks of 512 tokens.
    pretrain = run_with_peak_memory(
        [*LAUNCH, "training_scripts/pretrain.py", "--preset", "quick", "--time_budget_minutes", str(args.pretrain_minutes),
         "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "4", "--publish", "false",
         "--resume", "false", "--output_dir", str(work / "pretrain")], work / "pretrain.log")
    pretrain.update({k: v for k, v in json.loads((work / "pretrain" / "summary.json").read_text()).items()
                     if k in ("best_eval_ppl", "tokens_per_second", "precision", "steps", "train_tokens")})
    # Fine-tuning: batch 16 × accumulation 2 = the CPU preset's batch of 32 sentences.
    finetune = run_with_peak_memory(
        [*LAUNCH, "training_scripts/finetune_classifier.py", "--preset", "quick", "--model_name_or_path", args.encoder,
         "--per_device_train_batch_size", "16", "--gradient_accumulation_steps", "2", "--fp16", "--publish", "false",
         "--overwrite_output_dir", "--output_dir", str(work / "finetune")], work / "finetune.log")
    summary = json.loads((work / "finetune" / "summary.json").read_text())
    finetune.update({"train_runtime_s": summary["train_runtime_s"], "validation_f1_macro": summary["validation"].get("f1_macro")})

    lm = args.lm or str(work / "pretrain" / "best")
    results = {"pretrain_fp16_batch8_accum4": pretrain, "finetune_fp16_batch16_accum2": finetune,
               "encoder": args.encoder, "lm": args.lm or "this run's pretrained checkpoint",
               "inference": inference_latency(args.encoder, lm, args.repeats),
               "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    markdown = render_markdown(results)
    write_results("gpu_4gb", results, markdown, figures=figures(results), output_dir=args.output_dir)
    print(markdown)
    return 0


def render_markdown(results: dict) -> str:
    jobs = [{"job": "pretraining, fp16, batch 8 × accumulation 4", **results["pretrain_fp16_batch8_accum4"]},
            {"job": "PEFT classifier, fp16, batch 16 × accumulation 2", **results["finetune_fp16_batch16_accum2"]}]
    inference = results["inference"]
    latency = [{"call": call, **{precision: inference.get(f"{key}_{precision}_ms") for precision in ("fp32", "fp16")}}
               for call, key in (("QA encoder, one 256-token window", "qa_256_tokens"),
                                 ("tiny LM, 50-token prompt + 32 greedy tokens", "lm_50_prompt_32_new"))]
    return (f"# One 4 GB GPU ({inference['device']}): training memory and inference latency\n\n"
            + markdown_table(jobs, [("job", "job"), ("peak_gpu_mib", "peak GPU memory above idle (MiB)"), ("wall_s", "wall s")], {"wall_s": ".1f"})
            + "\nCUDA latency, batch 1, median ms:\n\n"
            + markdown_table(latency, [("call", "call"), ("fp32", "fp32 ms"), ("fp16", "fp16 ms")], ".2f"))


def figures(results: dict) -> dict[str, str]:
    pretrain, finetune, inference = (results[k] for k in ("pretrain_fp16_batch8_accum4", "finetune_fp16_batch16_accum2", "inference"))
    return {
        "GPU": inference["device"],
        "pretraining peak memory (fp16, batch 8 × 4)": f"{pretrain['peak_gpu_mib']} MiB",
        "PEFT classifier peak memory (fp16, batch 16 × 2)": f"{finetune['peak_gpu_mib']} MiB",
        "QA encoder, 256 tokens": f"{inference['qa_256_tokens_fp32_ms']:.2f} ms fp32, {inference['qa_256_tokens_fp16_ms']:.2f} ms fp16",
        "tiny LM, 50 + 32 tokens": (f"{inference['lm_50_prompt_32_new_fp32_ms']:.2f} ms fp32, "
                                    f"{inference['lm_50_prompt_32_new_fp16_ms']:.2f} ms fp16"),
    }


if __name__ == "__main__":
    run(main)
