"""Which precision trains fastest on this machine: measured, because CPUs differ by more than 100× in bf16.

A CPU with AMX or AVX512-BF16 multiplies bf16 natively, several times faster than fp32; one with only AVX2
(many AMD EPYC and older Xeon hosts) emulates it, and a bf16 matmul there ran at 1.2 GFLOP/s against 128 for
fp32. So `--mixed_precision auto` measures instead of guessing from flags, and every measurement here is
bounded in time: on an emulating CPU a full-size bf16 probe would itself take minutes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 5, budget_s: float = 3.0,
                warmup_s: float = 0.0) -> float:
    """GFLOP/s of the fastest of `repeats` square matmuls at the current thread count: the practical peak for that
    dtype (the fastest, because other work on a shared machine only ever slows a run down).

    Starts at 256² and doubles up to `size` only while the whole measurement stays within about `budget_s`,
    so a dtype the CPU emulates is measured on a smaller product instead of stalling the caller. `warmup_s` of
    matmuls first lets the cores reach their sustained clock (a cold start measured a third below it).
    """
    warm = torch.randn(256, 256, dtype=dtype)
    started = time.perf_counter()
    while time.perf_counter() - started < warmup_s:
        warm @ warm
    n = 256
    while True:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        started = time.perf_counter()
        a @ b  # also warms the kernel up
        one = time.perf_counter() - started
        if n >= size or 8 * one * (repeats + 1) > budget_s:  # the next size costs ~8× as much
            break
        n *= 2
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        timings.append(time.perf_counter() - started)
    return 2 * n**3 / min(timings) / 1e9


def cpu_bf16_support() -> str:
    """What the CPU offers bf16 matmuls: AMX tiles, AVX512-BF16 dot products, or neither (then bf16 is emulated)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "CPU flags unknown"
    found = [name for name in ("amx_bf16", "avx512_bf16", "avx512f") if name in flags]
    native = "amx_bf16" in flags or "avx512_bf16" in flags
    return (f"CPU flags {'/'.join(found) or 'none of amx_bf16/avx512_bf16/avx512f'}: bf16 matmul "
            f"{'native' if native else 'not native (no AMX, no AVX512-BF16)'}")


def time_train_step(model, batch: torch.Tensor, bf16: bool, repeats: int = 2) -> float:
    """Median seconds of a training forward + backward on `batch`, in fp32 or under bf16 autocast (gradients
    discarded)."""
    timings = []
    for i in range(repeats + 1):
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(batch, labels=batch, return_logits=False)["loss"]
        loss.backward()
        model.zero_grad(set_to_none=True)
        if i:  # the first run warms up kernels and allocators
            timings.append(time.perf_counter() - started)
    return sorted(timings)[len(timings) // 2]


def choose_precision(requested: str, model_factory, sample: torch.Tensor) -> tuple[str, dict]:
    """Resolve `--mixed_precision`: explicit values win, then the accelerate config, then a measurement.

    On CPU, "auto" first compares a bf16 with an fp32 matmul (a fraction of a second): where bf16's is slower
    the CPU emulates it and fp32 is kept. Otherwise it times a training step of the real model on a real batch
    in fp32 and under bf16 autocast and keeps the faster (autocast adds casts and float32 norms that a matmul
    alone does not show). On GPUs "auto" follows the accelerate config.
    """
    if requested != "auto":
        return requested, {}
    configured = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if configured != "no" or torch.cuda.is_available():
        return configured, {}
    info = {"probe_fp32_matmul_gflops": matmul_peak(torch.float32, size=512, budget_s=0.5),
            "probe_bf16_matmul_gflops": matmul_peak(torch.bfloat16, size=512, budget_s=0.5)}
    if info["probe_bf16_matmul_gflops"] < info["probe_fp32_matmul_gflops"]:
        return "no", info
    model = model_factory()
    info["probe_fp32_step_s"] = time_train_step(model, sample, bf16=False)
    info["probe_bf16_step_s"] = time_train_step(model, sample, bf16=True)
    info["probe_batch_tokens"] = sample.numel()
    return ("bf16" if info["probe_bf16_step_s"] < info["probe_fp32_step_s"] else "no"), info


def describe_probe(precision: str, info: dict) -> str:
    """One log line saying what `choose_precision` measured and chose."""
    chosen = "bf16" if precision == "bf16" else "fp32"
    if "probe_bf16_step_s" in info:
        return (f"precision: fp32 step {info['probe_fp32_step_s']:.3f} s, bf16 autocast "
                f"{info['probe_bf16_step_s']:.3f} s -> {chosen}")
    return (f"precision: bf16 matmul {info['probe_bf16_matmul_gflops']:.1f} GFLOP/s against fp32 "
            f"{info['probe_fp32_matmul_gflops']:.1f} (bf16 emulated on this CPU) -> {chosen}")
