"""Training-throughput measurement: pocketlm's loop against transformers' `Trainer`, tokens/s and MFU.

Every variant trains the same Llama configuration from the same initial weights on the same chunks for
the same number of optimizer steps (batch 8 unless the variant changes it), each in its own process so
precision settings, compiled graphs and allocator state never leak between them. A `TrainerCallback`
stamps the time at every optimizer step in both loops; tokens/s is the tokens of one step over the median
step time after `warmup_steps` (compilation and first-touch allocations excluded; the median resists bursts
of other work on a shared machine, and the mean is recorded too). MFU = achieved model FLOP/s over the matmul peak
measured in the same run for the variant's precision.
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pocketlm.allocator import loaded_allocator
from pocketlm.data.corpus import read_chunks_jsonl, write_chunks_jsonl
from pocketlm.training.lm_metrics import summarize


@dataclass(frozen=True)
class Variant:
    name: str
    loop: str  # "trainer" | "pocketlm"
    label: str
    bf16: bool = False
    batch_size: int = 8
    fused_optimizer: bool = False
    torch_compile: bool = False
    sdpa_math: bool = False
    """Force PyTorch's unfused "math" attention backend, to measure what the fused SDPA kernel gives."""
    fused_loss: bool = True
    """pocketlm's loop only: output projection and loss fused, chunk by chunk (`--fused_loss`); off, it builds the
    full logits tensor as the `Trainer` does."""
    allocator: str = "tcmalloc"
    """The malloc the variant's process runs on: "tcmalloc" (where installed, as the training scripts choose;
    `pocketlm.allocator`) or "system", to measure what the allocator gives."""
    default: bool = True
    """Part of the default run (which has to fit about 10 minutes of the shared 2-core machine)."""


VARIANTS = [
    # The Trainer with its default optimizer (fused AdamW, "adamw_torch_fused"), as its users get it.
    Variant("trainer_fp32", "trainer", "Trainer fp32", fused_optimizer=True),
    Variant("trainer_fp32_compile", "trainer", "Trainer fp32 + torch.compile", fused_optimizer=True, torch_compile=True),
    Variant("trainer_bf16", "trainer", "Trainer bf16 autocast", bf16=True, fused_optimizer=True),
    Variant("trainer_bf16_compile", "trainer", "Trainer bf16 autocast + torch.compile", bf16=True, fused_optimizer=True,
            torch_compile=True),
    # What tcmalloc gives each loop: the fastest fp32 variants again on the C library's malloc.
    Variant("trainer_fp32_compile_system_malloc", "trainer", "Trainer fp32 + torch.compile, system malloc",
            fused_optimizer=True, torch_compile=True, allocator="system"),
    Variant("ours_sdpa_math", "pocketlm", "ours, math attention (no fused SDPA)", sdpa_math=True, default=False),
    Variant("ours_base", "pocketlm", "ours fp32, plain AdamW", default=False),
    Variant("ours_full_logits", "pocketlm", "ours fp32 + fused AdamW, unfused loss (full logits)", fused_optimizer=True,
            fused_loss=False),
    Variant("ours_fused", "pocketlm", "ours fp32 + fused AdamW", fused_optimizer=True),
    Variant("ours_fused_system_malloc", "pocketlm", "ours fp32 + fused AdamW, system malloc", fused_optimizer=True,
            allocator="system"),
    Variant("ours_bf16", "pocketlm", "ours bf16 autocast + fused AdamW", bf16=True, fused_optimizer=True),
    Variant("ours_compile", "pocketlm", "ours fp32 + fused AdamW + torch.compile", fused_optimizer=True, torch_compile=True),
    Variant("ours_bf16_compile", "pocketlm", "ours bf16 autocast + fused AdamW + torch.compile", bf16=True,
            fused_optimizer=True, torch_compile=True),
    # Opt-in, to keep the default run near 10 minutes: batch 16 cost the most per step of the fp32 variants and
    # was slower per token than batch 8; batch 4 and math attention were slower than the defaults too.
    Variant("ours_batch16", "pocketlm", "ours fp32 + fused AdamW, batch 16", batch_size=16, fused_optimizer=True, default=False),
    Variant("ours_batch4", "pocketlm", "ours fp32 + fused AdamW, batch 4", batch_size=4, fused_optimizer=True, default=False),
]
VARIANTS_BY_NAME = {v.name: v for v in VARIANTS}


@dataclass
class BenchSettings:
    data_dir: Path
    work_dir: Path
    steps: int = 30
    warmup_steps: int = 5
    threads: int = 2
    learning_rate: float = 3e-3
    seed: int = 0
    model: dict = field(default_factory=lambda: {"d_model": 256, "n_layers": 4, "n_heads": 4, "d_ff": 688})


def median_round(rounds: list[dict]) -> dict:
    """The round with the median tokens/s (lower median for an even count), with every round's tokens/s beside it."""
    ordered = sorted(rounds, key=lambda r: r["tokens_per_second"])
    return {**ordered[(len(ordered) - 1) // 2], "rounds_tokens_per_second": [r["tokens_per_second"] for r in rounds]}


def chunk_length(data_dir: Path) -> int:
    """Tokens per chunk of a prepared corpus (every chunk has the same length): read off its first validation chunk."""
    return len(read_chunks_jsonl(data_dir / "validation.jsonl")[0]["input_ids"])


def faster_matmul_precision(peaks: dict) -> tuple[str, float]:
    """("fp32" or "bf16", its GFLOP/s): the precision whose measured matmul peak is higher on this host."""
    return max((("fp32", peaks["fp32_gflops"]), ("bf16", peaks["bf16_gflops"])), key=lambda p: p[1])


def matmul_flops_per_token(config) -> float:
    """Training FLOPs per token of the weight matmuls: 6 × matmul parameters (forward 2, backward 4).

    Matmul parameters are every linear layer including the output projection (tied or not: the product is
    computed either way), not the embedding lookup.
    """
    per_layer = 4 * config.d_model * config.d_model + 3 * config.d_model * config.d_ff
    return 6 * (config.n_layers * per_layer + config.d_model * config.vocab_size)


def flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs per token: the weight matmuls + causal attention scores. Attention adds QKᵀ and AV:
    2 × 2 × T × d per token per layer forward, halved by causality, tripled for forward + backward → 6 × T × d
    per layer."""
    return matmul_flops_per_token(config) + 6 * config.n_layers * seq_len * config.d_model


def attention_seconds_per_token(batch_size: int, seq_len: int, n_heads: int, head_dim: int, n_layers: int,
                                dtype: torch.dtype = torch.float32, repeats: int = 5) -> float:
    """The fused causal attention kernels' time per token, forward and backward over all layers (the fastest of
    `repeats` at the current thread count).

    The matmul peak does not bound this part of a step: attention's products have an inner dimension of one
    head (64), which CPUs run far below the square-matmul peak, so the ceiling adds this measured time instead.
    """
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch_size, n_heads, seq_len, head_dim, generator=generator, dtype=dtype, requires_grad=True)
               for _ in range(3))
    grad = torch.randn(batch_size, n_heads, seq_len, head_dim, generator=generator, dtype=dtype)
    timings = []
    for _ in range(repeats + 1):  # the first call warms the kernel up
        started = time.perf_counter()
        F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(grad)
        timings.append(time.perf_counter() - started)
    return min(timings[1:]) * n_layers / (batch_size * seq_len)


def step_timer():
    """A TrainerCallback that records `time.perf_counter()` and the loss at each optimizer step (both loops)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.losses: dict[int, float] = {}

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses[state.global_step] = logs["loss"]

    return StepTimer()


def prepare_subset(settings: BenchSettings, batch_size: int) -> Path:
    """A prepared-corpus folder holding exactly the chunks the run consumes (and one validation chunk)."""
    folder = settings.work_dir / f"data-b{batch_size}"
    if not (folder / "train.jsonl").is_file():
        chunks = read_chunks_jsonl(settings.data_dir / "train.jsonl")[: settings.steps * batch_size]
        if len(chunks) < settings.steps * batch_size:
            raise ValueError(f"{settings.data_dir} has {len(chunks)} chunks, fewer than steps × batch")
        shutil.copytree(settings.data_dir / "tokenizer", folder / "tokenizer", dirs_exist_ok=True)
        write_chunks_jsonl(folder / "train.jsonl", [c["input_ids"] for c in chunks])
        write_chunks_jsonl(folder / "validation.jsonl", [read_chunks_jsonl(settings.data_dir / "validation.jsonl")[0]["input_ids"]])
    return folder


def initial_weights(settings: BenchSettings, vocab_size: int, tokenizer) -> Path:
    """Save one randomly initialised model that every variant starts from (Llama format)."""
    from pocketlm.models.transformer_lm import TransformerLM, TransformerLMConfig

    folder = settings.work_dir / "init"
    if not (folder / "model.safetensors").is_file():
        torch.manual_seed(settings.seed)
        config = TransformerLMConfig(vocab_size=vocab_size, bos_token_id=tokenizer.eos_token_id,
                                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **settings.model)
        TransformerLM(config).save_pretrained(folder)
    return folder


def run_variant(variant: Variant, settings: BenchSettings) -> dict:
    """Train one variant for `settings.steps` steps in this process; returns timings, loss and FLOP counts."""
    from transformers import AutoTokenizer

    from pocketlm.models.transformer_lm import TransformerLMConfig

    torch.set_num_threads(settings.threads)
    data = prepare_subset(settings, variant.batch_size)
    tokenizer = AutoTokenizer.from_pretrained(data / "tokenizer")
    init = initial_weights(settings, len(tokenizer), tokenizer)
    config = TransformerLMConfig.from_llama_dict(json.loads((init / "config.json").read_text()))
    seq_len = chunk_length(data)
    timer = step_timer()
    context = torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH) if variant.sdpa_math else nullcontext()
    started = time.perf_counter()
    with context:
        if variant.loop == "trainer":
            _train_with_trainer(variant, settings, data, init, tokenizer, timer)
        else:
            _train_with_pocketlm(variant, settings, data, init, timer)
    wall = time.perf_counter() - started
    timed_steps = settings.steps - settings.warmup_steps
    step_seconds = [b - a for a, b in zip(timer.times[settings.warmup_steps - 1 :], timer.times[settings.warmup_steps :])]
    tokens_per_step = variant.batch_size * seq_len
    losses = [timer.losses[s] for s in sorted(timer.losses)]
    return {
        "name": variant.name, "label": variant.label, "loop": variant.loop, "bf16": variant.bf16,
        "batch_size": variant.batch_size, "fused_optimizer": variant.fused_optimizer,
        "torch_compile": variant.torch_compile, "sdpa": "math" if variant.sdpa_math else "fused (is_causal)",
        "fused_loss": variant.loop == "pocketlm" and variant.fused_loss,
        "steps": settings.steps, "timed_steps": timed_steps, "seq_len": seq_len,
        # The median step: robust to bursts of other work on a shared machine; the mean is kept beside it.
        "tokens_per_second": tokens_per_step / summarize(step_seconds)["median"],
        "tokens_per_second_mean": tokens_per_step * len(step_seconds) / sum(step_seconds),
        "seconds_per_step": summarize(step_seconds)["median"], "step_seconds": step_seconds,
        "first_steps_seconds": timer.times[settings.warmup_steps - 1] - started, "wall_seconds": wall,
        "final_loss": sum(losses[-5:]) / len(losses[-5:]), "losses": losses,
        "flops_per_token": flops_per_token(config, seq_len), "matmul_flops_per_token": matmul_flops_per_token(config),
        "threads": settings.threads, "allocator": loaded_allocator(),
        # the process's peak resident memory: what tcmalloc's keeping of freed memory costs (Linux reports kB)
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _train_with_trainer(variant, settings, data, init, tokenizer, timer) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, DataCollatorForLanguageModeling, Trainer, TrainingArguments

    model = AutoModelForCausalLM.from_pretrained(init, attn_implementation="sdpa")
    chunks = Dataset.from_list([{"input_ids": c["input_ids"]} for c in read_chunks_jsonl(data / "train.jsonl")])
    args = TrainingArguments(
        output_dir=str(settings.work_dir / f"out-{variant.name}"), max_steps=settings.steps,
        per_device_train_batch_size=variant.batch_size, learning_rate=settings.learning_rate, warmup_steps=5,
        lr_scheduler_type="cosine", weight_decay=0.1, adam_beta2=0.95, max_grad_norm=1.0,
        bf16=variant.bf16, use_cpu=True, logging_steps=1, save_strategy="no", report_to=[], seed=settings.seed,
        dataloader_num_workers=0, disable_tqdm=True, optim="adamw_torch_fused" if variant.fused_optimizer else "adamw_torch",
        torch_compile=variant.torch_compile,
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    Trainer(model=model, args=args, train_dataset=chunks, data_collator=collator, callbacks=[timer]).train()


def _train_with_pocketlm(variant, settings, data, init, timer) -> None:
    # min_lr_ratio 0: the cosine ends at 0, as the Trainer's does, so the final losses compare too.
    from pocketlm.training.pretrain import PretrainArguments, train

    args = PretrainArguments(
        data_dir=str(data), output_dir=str(settings.work_dir / f"out-{variant.name}"), resume=False, publish=False,
        max_steps=settings.steps, per_device_train_batch_size=variant.batch_size, learning_rate=settings.learning_rate,
        warmup_steps=5, min_lr_ratio=0.0, masking="none", mixed_precision="bf16" if variant.bf16 else "no",
        fused_optimizer=variant.fused_optimizer, fused_loss=variant.fused_loss, torch_compile=variant.torch_compile,
        logging_steps=1,
        save_steps=10**9, generation_prompts=0, seed=settings.seed, init_from=str(init), **settings.model,
    )
    train(args, callbacks=[timer], log=lambda *a, **k: None)


def add_derived(rows: list[dict], peaks: dict) -> None:
    """Model FLOP/s, MFU against the measured peak of each row's precision, and speed-ups against the Trainer."""
    by_name = {r["name"]: r for r in rows}
    trainer_best = max((r["tokens_per_second"] for r in rows if r["loop"] == "trainer"), default=None)
    for row in rows:
        row["model_gflops"] = row["tokens_per_second"] * row["flops_per_token"] / 1e9
        row["peak_gflops"] = peaks["bf16_gflops"] if row["bf16"] else peaks["fp32_gflops"]
        row["mfu"] = row["model_gflops"] / row["peak_gflops"]
        for ref in ("trainer_fp32", "trainer_bf16"):
            if ref in by_name:
                row[f"speedup_vs_{ref}"] = row["tokens_per_second"] / by_name[ref]["tokens_per_second"]
        if trainer_best:
            row["speedup_vs_trainer_best"] = row["tokens_per_second"] / trainer_best


def profile_variant(variant: Variant, settings: BenchSettings, top: int = 15) -> list[dict]:
    """Where one variant's time goes: train it under `torch.profiler` (CPU) and return the `top` operators by
    self time over the whole run (warm-up steps included: the same operators, a little longer), each with its
    calls, milliseconds and share of all operators' self time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        run_variant(variant, settings)
    events = [e for e in profiler.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [{"operator": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1000,
             "share": e.self_cpu_time_total / total} for e in ranked]
