"""The pretraining loop: `TransformerLM` on prepared chunks, with `accelerate`, callbacks and resumable checkpoints.

Why a hand-written loop rather than transformers' `Trainer`: the project sets a throughput target against
`Trainer` (≥ 1.5× its tokens/s on the same model and data), and the loop is short enough to read in one go.
It still uses the libraries for everything they do: `accelerate.Accelerator` (device placement, mixed
precision, gradient accumulation, DDP, seedable samplers, `save_state`/`load_state`), transformers'
`TrainerState`/`TrainerCallback` (so the same callbacks serve both loops), `CustomDataCollator`.

One run, in order: choose the precision (`--mixed_precision auto` times fp32 against bf16 autocast on
this machine and keeps the faster), build or resume, then per epoch train → evaluate (token-weighted
validation perplexity) → generate samples (distinct-1/2) → callbacks (best checkpoint by perplexity,
metrics JSON/CSV + curves PNG) → checkpoint. A checkpoint (`<output_dir>/last`) is written every
`save_steps` optimizer steps and at each epoch end, into a staging folder swapped in whole, so a run
killed at any moment resumes from the last complete one.

The learning rate warms up linearly, then follows a cosine to `min_lr_ratio × learning_rate`. Its clock
is the *larger* of step progress and, with `time_budget_minutes`, elapsed-time progress: a budgeted run on
a slow or busy machine still ends on time with a fully decayed learning rate (no scheduler in torch or
transformers decays by wall-clock, hence this one).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from pocketlm import TINY_LM
from pocketlm.data.collator import MODES, CustomDataCollator
from pocketlm.data.corpus import default_prepared_dir, read_chunks_jsonl
from pocketlm.errors import ConfigError, PocketLMError
from pocketlm.hub import validate_repo_id
from pocketlm.io import replace_dir
from pocketlm.io import without_secrets, write_json
from pocketlm.settings import runs_dir
from pocketlm.training.checkpoints import pretrain_resume_point
from pocketlm.training.distributed import mean_over_processes
from pocketlm.training.lm_metrics import GENERATION_PROMPTS, distinct_n, perplexity, token_nll

LAST_CHECKPOINT = "last"
BEST_CHECKPOINT = "best"
PROGRESS_FILE = "progress.json"
STATE_FILE = "trainer_state.json"


@dataclass
class PretrainArguments:
    data_dir: str | None = field(default=None, metadata={"help": "prepared corpus (prepare_corpus.py); default: $POCKETLM_RUNS_DIR/corpus"})
    output_dir: str | None = field(default=None, metadata={"help": "checkpoints and metrics; default: $POCKETLM_RUNS_DIR/pretrain"})
    init_from: str | None = field(
        default=None, metadata={"help": "start from these weights (a Llama folder or hub id) instead of a random init"}
    )
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 688
    num_train_epochs: float = field(default=1.0, metadata={"help": "epochs over the train chunks (may be fractional)"})
    max_steps: int = field(default=-1, metadata={"help": "optimizer steps; overrides num_train_epochs when > 0"})
    time_budget_minutes: float = field(
        default=0.0, metadata={"help": "end training (learning rate fully decayed) after this many minutes; 0 = no limit"}
    )
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 3e-3
    min_lr_ratio: float = field(default=0.1, metadata={"help": "final learning rate as a share of the peak"})
    warmup_steps: int = 30
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    max_grad_norm: float = 1.0
    masking: str = field(default="static", metadata={"help": f"input masking of the collator: {', '.join(MODES)}"})
    mlm_probability: float = field(default=0.15, metadata={"help": "share of a masked chunk's tokens replaced by <mask>"})
    static_chunk_fraction: float = field(default=0.10, metadata={"help": "share of chunks masked in static mode"})
    mixed_precision: str = field(
        default="auto",
        metadata={"help": "no | bf16 | fp16 | auto (the accelerate config's setting; on CPU, bf16 only where timed faster)"},
    )
    torch_compile: bool = field(default=False, metadata={"help": "torch.compile the model for training and evaluation"})
    fused_optimizer: bool = field(default=True, metadata={"help": "fused AdamW kernel (one pass over all parameters)"})
    seed: int = 42
    logging_steps: int = 20
    save_steps: int = 100
    eval_max_chunks: int = field(default=0, metadata={"help": "evaluate on at most this many validation chunks; 0 = all"})
    generation_tokens: int = field(default=48, metadata={"help": "tokens generated per prompt after each epoch"})
    generation_prompts: int = field(default=3, metadata={"help": "how many of the fixed prompts to sample after each epoch"})
    resume: bool = field(default=True, metadata={"help": "continue from <output_dir>/last when it exists"})
    publish: bool = field(default=True, metadata={"help": "publish the best checkpoint to the local hub folder"})
    repo_id: str = TINY_LM
    push_to_hub: bool = False
    hub_token: str | None = None

    def __post_init__(self) -> None:
        if self.masking not in MODES:
            raise ConfigError(f"--masking must be one of {', '.join(MODES)}, got {self.masking!r}")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ConfigError(f"--mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                     "logging_steps", "save_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ConfigError("set --num_train_epochs or --max_steps to a positive value")
        validate_repo_id(self.repo_id, "--repo_id")

    def training_fields(self) -> dict:
        """The arguments that shape the trained model; a checkpoint resumes only under the same ones."""
        ignored = {"resume", "publish", "repo_id", "push_to_hub", "hub_token", "logging_steps", "save_steps",
                   "generation_tokens", "generation_prompts", "output_dir"}
        fields = {k: v for k, v in asdict(self).items() if k not in ignored}
        return {**fields, "data_dir": str(self.data_path.resolve())}

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir) if self.data_dir else default_prepared_dir()

    @property
    def output_path(self) -> Path:
        return Path(self.output_dir) if self.output_dir else runs_dir() / "pretrain"


@dataclass
class PretrainResult:
    output_dir: Path
    best_dir: Path
    history: list[dict]
    summary: dict


# ---------------------------------------------------------------- pieces


def load_prepared(data_dir: Path):
    """The tokenizer and the train/validation chunks written by `prepare_corpus`; a clear error if absent."""
    from transformers import AutoTokenizer

    needed = [data_dir / "tokenizer" / "tokenizer.json", data_dir / "train.jsonl", data_dir / "validation.jsonl"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise PocketLMError(
            f"prepared corpus not found ({', '.join(missing)}); run training_scripts/prepare_corpus.py "
            f"--output_dir {data_dir} first, or pass --data_dir"
        )
    tokenizer = AutoTokenizer.from_pretrained(data_dir / "tokenizer")
    train, validation = read_chunks_jsonl(data_dir / "train.jsonl"), read_chunks_jsonl(data_dir / "validation.jsonl")
    if not train:
        raise PocketLMError(f"{data_dir / 'train.jsonl'} holds no chunks")
    return tokenizer, train, validation


def time_train_step(model, batch: torch.Tensor, bf16: bool, repeats: int = 2) -> float:
    """Median seconds of a forward + backward on `batch`, in fp32 or under bf16 autocast (gradients discarded)."""
    timings = []
    for i in range(repeats + 1):
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(batch, labels=batch)["loss"]
        loss.backward()
        model.zero_grad(set_to_none=True)
        if i:  # the first run warms up kernels and allocators
            timings.append(time.perf_counter() - started)
    return sorted(timings)[len(timings) // 2]


def choose_precision(requested: str, model_factory, sample: torch.Tensor) -> tuple[str, dict]:
    """Resolve `--mixed_precision`: explicit values win, then the accelerate config, then a measurement.

    On CPU, "auto" times a training step of the real model on a real batch in fp32 and under bf16 autocast
    and keeps bf16 only if it is faster: bf16 pays off where the CPU multiplies bf16 natively (AMX,
    AVX512-BF16) and costs 3–4× where it is emulated. On GPUs "auto" follows the accelerate config.
    """
    import os

    if requested != "auto":
        return requested, {}
    configured = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if configured != "no" or torch.cuda.is_available():
        return configured, {}
    model = model_factory()
    fp32 = time_train_step(model, sample, bf16=False)
    bf16 = time_train_step(model, sample, bf16=True)
    choice = "bf16" if bf16 < fp32 else "no"
    return choice, {"probe_fp32_step_s": fp32, "probe_bf16_step_s": bf16, "probe_batch_tokens": sample.numel()}


def learning_rate_at(args: PretrainArguments, step: int, progress: float) -> float:
    """Linear warm-up over `warmup_steps`, then cosine from the peak down to `min_lr_ratio` of it at progress 1."""
    if step < args.warmup_steps:
        return args.learning_rate * (step + 1) / args.warmup_steps
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return args.learning_rate * (args.min_lr_ratio + (1 - args.min_lr_ratio) * cosine)


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (linear layers, embeddings), none on the norms' gains (nanoGPT's rule)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def without_full_attention_mask(batch: dict) -> dict:
    """Drop an all-ones attention mask: without one the model calls SDPA with `is_causal=True`, whose fused
    kernel is faster than the general masked path (full chunks never need padding)."""
    mask = batch.get("attention_mask")
    if mask is not None and bool(mask.all()):
        batch = {k: v for k, v in batch.items() if k != "attention_mask"}
    return batch


@torch.no_grad()
def evaluate(model, dataloader, accelerator) -> dict:
    """Token-weighted validation loss and perplexity over the whole loader (exact under data parallelism)."""
    model.eval()
    nll_total, token_total = 0.0, 0.0
    for batch in dataloader:
        batch = without_full_attention_mask(batch)
        with accelerator.autocast():
            nll, count = token_nll(model, batch["input_ids"], batch.get("attention_mask"), batch["labels"])
        nll, count = accelerator.gather_for_metrics((nll, count))
        nll_total += nll.sum().item()
        token_total += count.sum().item()
    model.train()
    loss = nll_total / token_total if token_total else float("nan")
    return {"eval_loss": loss, "eval_ppl": perplexity(nll_total, int(token_total)), "validation_tokens": int(token_total)}


@torch.no_grad()
def sample_texts(model, tokenizer, prompts, max_new_tokens: int, seed: int, top_k: int = 50) -> list[str]:
    """Sample a continuation of each prompt (top-k, temperature 1) with a fixed seed; returns the new text only."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    texts = []
    for prompt in prompts:
        ids = torch.tensor([[tokenizer.eos_token_id, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]], device=device)
        out = model.generate(ids, max_new_tokens=max_new_tokens, top_k=top_k, generator=generator)
        texts.append(tokenizer.decode(out[0, ids.size(1) :], skip_special_tokens=True))
    model.train(was_training)
    return texts


# ---------------------------------------------------------------- callbacks


class BestCheckpointCallback:
    """Keep `<output_dir>/best` = the model (+ tokenizer) with the lowest validation perplexity so far.

    A transformers `TrainerCallback` (it subclasses it lazily below), so it works in this loop and in a
    `Trainer` alike; the folder is written aside and swapped in whole.
    """

    def __init__(self, output_dir: str | Path, metric: str = "eval_ppl"):
        self.best_dir = Path(output_dir) / BEST_CHECKPOINT
        self.metric = metric

    def on_evaluate(self, args, state, control, metrics=None, model=None, processing_class=None, **kwargs):
        value = (metrics or {}).get(self.metric)
        if value is None or not state.is_world_process_zero:
            return
        if state.best_metric is not None and value >= state.best_metric:
            return
        state.best_metric, state.best_global_step = value, state.global_step
        state.best_model_checkpoint = str(self.best_dir)
        staging = self.best_dir.with_name(f".{BEST_CHECKPOINT}.staging")
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging)
        if processing_class is not None:
            processing_class.save_pretrained(staging)
        write_json(staging / "best_metrics.json", {**metrics, "step": state.global_step, "epoch": state.epoch})
        replace_dir(staging, self.best_dir)


def _as_trainer_callback(cls):
    """Make `cls` a real `transformers.TrainerCallback` subclass without importing transformers at module import."""
    from transformers import TrainerCallback

    return type(cls.__name__, (cls, TrainerCallback), {})


class _Dispatcher:
    """Calls one event on every callback, passing what `Trainer` passes (model, processing_class...)."""

    def __init__(self, callbacks, args, state, control, **objects):
        self.callbacks, self.args, self.state, self.control, self.objects = callbacks, args, state, control, objects

    def __call__(self, event: str, **kwargs) -> None:
        for callback in self.callbacks:
            handler = getattr(callback, event, None)
            if handler is not None:
                handler(self.args, self.state, self.control, **self.objects, **kwargs)


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(accelerator, output_dir: Path, state, progress: dict) -> None:
    """Write the full training state to `<output_dir>/last` atomically (staging folder, then swap).

    Model, optimizer and RNG states via `accelerator.save_state` (safetensors for the weights, and
    `torch.load(weights_only=True)` on the way back); the step counters and history as JSON.
    """
    staging = output_dir / f".{LAST_CHECKPOINT}.staging"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging), safe_serialization=True)
    if accelerator.is_main_process:
        state.save_to_json(str(staging / STATE_FILE))
        write_json(staging / PROGRESS_FILE, progress)
        replace_dir(staging, output_dir / LAST_CHECKPOINT)
    accelerator.wait_for_everyone()


def load_checkpoint(accelerator, output_dir: Path, args: PretrainArguments):
    """Restore `<output_dir>/last`: returns (TrainerState, progress dict), or None when there is none.

    Refuses (one-line error) a checkpoint written under other training arguments: resuming it would
    silently train something else than asked.
    """
    from transformers import TrainerState

    folder = pretrain_resume_point(output_dir, accelerator)  # repairs an interrupted swap; refuses a lost run
    if folder is None:
        return None
    saved = json.loads((folder / PROGRESS_FILE).read_text()).get("args", {})
    changed = sorted(k for k, v in args.training_fields().items() if k in saved and saved[k] != v)
    if changed:
        raise ConfigError(
            f"{folder} was written with other arguments ({', '.join(f'--{k} {saved[k]}' for k in changed)}); "
            "pass another --output_dir, or --resume false to start over"
        )
    accelerator.load_state(str(folder))
    return TrainerState.load_from_json(str(folder / STATE_FILE)), json.loads((folder / PROGRESS_FILE).read_text())


# ---------------------------------------------------------------- the loop


def train(args: PretrainArguments, callbacks=(), log=print) -> PretrainResult:
    """Run (or resume) pretraining as `args` says; returns where the best checkpoint is and the history."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    from transformers import TrainerControl, TrainerState

    from pocketlm.models.transformer_lm import TransformerLM, TransformerLMConfig
    from pocketlm.training.callbacks import MetricsWriterCallback

    # accelerate warns on every save that the tied lm_head is stored once; that is intended (transformers re-ties it).
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
    output_dir = args.output_path
    tokenizer, train_rows, validation_rows = load_prepared(args.data_path)
    if args.eval_max_chunks > 0:
        validation_rows = validation_rows[: args.eval_max_chunks]
    chunk_length = len(train_rows[0]["input_ids"])
    config = TransformerLMConfig(
        vocab_size=len(tokenizer), d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads,
        d_ff=args.d_ff, max_seq_len=max(1024, chunk_length), bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )

    if args.init_from:
        from pocketlm.hub import resolve

        init_dir = resolve(args.init_from)
        config = TransformerLM.from_pretrained(init_dir).config
        if config.vocab_size != len(tokenizer):
            raise ConfigError(f"--init_from {args.init_from} has vocab {config.vocab_size}, the corpus tokenizer {len(tokenizer)}")

    def fresh_model():
        set_seed(args.seed)
        return TransformerLM.from_pretrained(init_dir) if args.init_from else TransformerLM(config)

    probe = torch.tensor([row["input_ids"] for row in train_rows[: min(2, len(train_rows))]])
    precision, probe_info = choose_precision(args.mixed_precision, fresh_model, probe)
    accelerator = Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    if accelerator.is_main_process and probe_info:
        log(f"precision: fp32 step {probe_info['probe_fp32_step_s']:.3f} s, bf16 autocast "
            f"{probe_info['probe_bf16_step_s']:.3f} s -> {'bf16' if precision == 'bf16' else 'fp32'}")
    model = fresh_model()
    optimizer = torch.optim.AdamW(
        parameter_groups(model, args.weight_decay), lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2), fused=args.fused_optimizer or None,
    )
    # Dynamic masks are seeded per batch number, not drawn from the global RNG: creating a DataLoader iterator
    # draws from that, and the loader prefetches a batch, so a resumed run would mask differently.
    collator = CustomDataCollator(
        tokenizer, mode=args.masking, mlm_probability=args.mlm_probability,
        static_chunk_fraction=args.static_chunk_fraction, seed=args.seed,
        dynamic_seed=args.seed * 1000 + accelerator.process_index,
    )
    train_loader = DataLoader(train_rows, batch_size=args.per_device_train_batch_size, shuffle=True,
                              collate_fn=collator, drop_last=len(train_rows) >= args.per_device_train_batch_size)
    eval_loader = DataLoader(validation_rows, batch_size=args.per_device_eval_batch_size,
                             collate_fn=CustomDataCollator(tokenizer, mode="none"))
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    step_model = torch.compile(model) if args.torch_compile else model

    batches_per_epoch = len(train_loader)
    steps_per_epoch = max(1, batches_per_epoch // args.gradient_accumulation_steps)
    total_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
    tokens_per_step = (args.per_device_train_batch_size * chunk_length * args.gradient_accumulation_steps
                       * accelerator.num_processes)

    state = TrainerState(max_steps=total_steps, logging_steps=args.logging_steps, save_steps=args.save_steps,
                         num_train_epochs=math.ceil(total_steps / steps_per_epoch), train_batch_size=args.per_device_train_batch_size)
    state.is_world_process_zero = accelerator.is_main_process
    state.is_local_process_zero = accelerator.is_local_main_process
    progress = {"args": args.training_fields(), "epoch": 0, "batches_done": 0, "batches_total": 0, "elapsed_s": 0.0,
                "train_seconds": 0.0, "tokens": 0, "done": False, "precision": precision, **probe_info}
    if args.resume and (restored := load_checkpoint(accelerator, output_dir, args)):
        state, progress = restored
        state.is_world_process_zero = accelerator.is_main_process
        state.is_local_process_zero = accelerator.is_local_main_process
        if accelerator.is_main_process:
            log(f"resuming from {output_dir / LAST_CHECKPOINT}: step {state.global_step}, epoch {progress['epoch']}")
    elif accelerator.is_main_process and (output_dir / LAST_CHECKPOINT).exists():
        shutil.rmtree(output_dir / LAST_CHECKPOINT)
        shutil.rmtree(output_dir / BEST_CHECKPOINT, ignore_errors=True)

    control = TrainerControl()
    unwrapped = accelerator.unwrap_model(model)
    all_callbacks = [_as_trainer_callback(BestCheckpointCallback)(output_dir),
                     MetricsWriterCallback(output_dir, title="pretraining"), *callbacks]
    dispatch = _Dispatcher(all_callbacks, args, state, control, model=unwrapped, processing_class=tokenizer,
                           optimizer=optimizer)
    budget_s = args.time_budget_minutes * 60

    def current_progress() -> float:
        by_steps = state.global_step / total_steps
        by_time = progress["elapsed_s"] / budget_s if budget_s else 0.0
        return max(by_steps, by_time)

    def log_record(record: dict) -> None:
        state.log_history.append(record)
        dispatch("on_log", logs=record)

    def end_of_epoch(epoch_losses: list[float]) -> None:
        # The uncompiled model evaluates: a compiled one would recompile for no_grad and for the short last batch.
        eval_metrics = evaluate(model, eval_loader, accelerator) if len(eval_loader) else {}
        prompts = GENERATION_PROMPTS[: args.generation_prompts]
        samples = sample_texts(unwrapped, tokenizer, prompts, args.generation_tokens, seed=args.seed) if prompts else []
        record = {
            "step": state.global_step, "epoch": round(state.epoch, 4),
            "train_loss": sum(epoch_losses) / len(epoch_losses) if epoch_losses else float("nan"),
            **eval_metrics,
            "gen_distinct_1": distinct_n(samples, 1), "gen_distinct_2": distinct_n(samples, 2),
            "elapsed_s": round(progress["elapsed_s"], 1),
        }
        log_record(record)
        if accelerator.is_main_process:
            sample = f" | sample: {samples[0][:80]!r}" if samples else ""
            log(f"epoch {state.epoch:.2f} | step {state.global_step} | train loss {record['train_loss']:.3f} | "
                f"val ppl {record.get('eval_ppl', float('nan')):.1f} | distinct-1/2 {record['gen_distinct_1']:.2f}/"
                f"{record['gen_distinct_2']:.2f}{sample}")
            with (output_dir / "samples.jsonl").open("a") as f:
                f.write(json.dumps({"step": state.global_step, "epoch": state.epoch, "samples": dict(zip(prompts, samples))}) + "\n")
        dispatch("on_evaluate", metrics=record)
        dispatch("on_epoch_end")

    output_dir.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        write_json(output_dir / "pretrain_args.json", without_secrets(asdict(args)))
        log(f"{unwrapped.num_parameters():,} parameters | {len(train_rows):,} train chunks of {chunk_length} | "
            f"{total_steps} steps of {tokens_per_step:,} tokens | precision {precision} | "
            f"{accelerator.num_processes} process(es) on {accelerator.device}")
    dispatch("on_train_begin")
    bar = tqdm(total=total_steps, initial=state.global_step, desc="pretraining", unit="step",
               disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    window_losses: list[float] = []
    epoch_losses: list[float] = []
    clock = time.perf_counter()

    def tick() -> None:
        nonlocal clock
        now = time.perf_counter()
        progress["elapsed_s"] += now - clock
        clock = now

    def set_learning_rate() -> float:
        lr = learning_rate_at(args, state.global_step, current_progress())
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def finish() -> None:
        """Stopped mid-epoch (max_steps or the time budget): evaluate the final model too, then mark the run done."""
        if window_losses:
            epoch_losses.append(sum(window_losses) / len(window_losses))
        end_of_epoch(epoch_losses)
        tick()
        progress["done"] = True
        save_checkpoint(accelerator, output_dir, state, progress)

    set_learning_rate()  # the first step warms up too (and a resumed one continues the schedule)
    model.train()
    while not progress["done"]:
        if current_progress() >= 1.0:  # resumed after the last step but before the final evaluation
            finish()
            break
        epoch = progress["epoch"]
        train_loader.set_epoch(epoch)
        collator.batches_drawn = progress["batches_total"]
        loader = accelerator.skip_first_batches(train_loader, progress["batches_done"]) if progress["batches_done"] else train_loader
        dispatch("on_epoch_begin")
        step_started = time.perf_counter()
        for batch in loader:
            batch = without_full_attention_mask(batch)
            with accelerator.accumulate(model):
                loss = step_model(**batch)["loss"]
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            progress["batches_done"] += 1
            progress["batches_total"] += 1
            window_losses.append(mean_over_processes(accelerator, loss))
            if not accelerator.sync_gradients:
                continue
            state.global_step += 1
            state.epoch = epoch + progress["batches_done"] / batches_per_epoch
            progress["tokens"] += tokens_per_step
            tick()
            progress["train_seconds"] += time.perf_counter() - step_started
            lr = set_learning_rate()
            bar.update(1)
            if state.global_step % args.logging_steps == 0:
                mean_loss = sum(window_losses) / len(window_losses)
                epoch_losses.append(mean_loss)
                log_record({"step": state.global_step, "epoch": round(state.epoch, 4), "loss": mean_loss,
                            "learning_rate": lr, "tokens_per_second": progress["tokens"] / progress["train_seconds"]})
                bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.2e}")
                window_losses = []
            dispatch("on_step_end")
            finished = current_progress() >= 1.0
            if finished or state.global_step % args.save_steps == 0:
                save_checkpoint(accelerator, output_dir, state, progress)
                tick()
            if finished:
                break
            step_started = time.perf_counter()
        else:  # the epoch ran out
            if window_losses:
                epoch_losses.append(sum(window_losses) / len(window_losses))
                window_losses = []
            progress["epoch"], progress["batches_done"] = epoch + 1, 0
            end_of_epoch(epoch_losses)
            epoch_losses = []
            tick()
            progress["done"] = current_progress() >= 1.0
            save_checkpoint(accelerator, output_dir, state, progress)
            continue
        finish()
    bar.close()
    dispatch("on_train_end")
    summary = {
        "best_eval_ppl": state.best_metric, "best_step": state.best_global_step, "steps": state.global_step,
        "epochs": state.epoch, "train_tokens": progress["tokens"], "elapsed_s": progress["elapsed_s"],
        "tokens_per_second": progress["tokens"] / progress["train_seconds"] if progress["train_seconds"] else 0.0,
        "precision": progress["precision"], "parameters": unwrapped.num_parameters(),
        **{k: v for k, v in progress.items() if k.startswith("probe_")},
    }
    if accelerator.is_main_process:
        write_json(output_dir / "summary.json", summary)
    accelerator.wait_for_everyone()
    return PretrainResult(output_dir, output_dir / BEST_CHECKPOINT, state.log_history, summary)


# ---------------------------------------------------------------- publishing

TRAINING_FILES = ("metrics.json", "metrics.csv", "curves.png", "samples.jsonl", "summary.json", "pretrain_args.json")


def publish_best(args: PretrainArguments, result: PretrainResult) -> Path:
    """Publish the best checkpoint (weights + tokenizer) as `args.repo_id` with a model card of measured metrics.

    The run's history, curves and samples go along (`training_metrics.json/csv`, `curves.png`...); the
    card's own `metrics.json` holds the headline numbers that also fill its `model-index`.
    """
    from pocketlm.hub import ModelCardInfo, publish

    best_metrics = json.loads((result.best_dir / "best_metrics.json").read_text())
    summary = result.summary
    corpus_stats = json.loads((args.data_path / "stats.json").read_text()) if (args.data_path / "stats.json").is_file() else {}
    metrics = {
        "perplexity": best_metrics["eval_ppl"],
        "eval_loss": best_metrics["eval_loss"],
        "distinct_1": best_metrics["gen_distinct_1"],
        "distinct_2": best_metrics["gen_distinct_2"],
    }
    epochs = [r for r in result.history if "eval_ppl" in r]
    table = "\n".join(
        ["| epoch | step | train loss | validation loss | validation PPL | distinct-1 | distinct-2 |",
         "| --- | --- | --- | --- | --- | --- | --- |"]
        + [f"| {r['epoch']:.2f} | {r['step']} | {r['train_loss']:.3f} | {r['eval_loss']:.3f} | {r['eval_ppl']:.1f} | "
           f"{r['gen_distinct_1']:.3f} | {r['gen_distinct_2']:.3f} |" for r in epochs]
    )
    setup = (
        f"{summary['parameters']:,} parameters ({args.n_layers} layers, d_model {args.d_model}, {args.n_heads} heads, "
        f"SwiGLU width {args.d_ff}), vocab {corpus_stats.get('vocab_size', '?')}, "
        f"{corpus_stats.get('train', {}).get('chunks', '?')} train chunks of {corpus_stats.get('train', {}).get('length', '?')} "
        f"tokens (stride {corpus_stats.get('train', {}).get('stride', '?')}). {summary['steps']} steps "
        f"({summary['epochs']:.2f} epochs, {summary['train_tokens']:,} tokens) in {summary['elapsed_s'] / 60:.1f} min at "
        f"{summary['tokens_per_second']:,.0f} tokens/s, precision {summary['precision']}; AdamW lr {args.learning_rate}, "
        f"batch {args.per_device_train_batch_size} × accumulation {args.gradient_accumulation_steps}, "
        f"masking {args.masking}. Best checkpoint: step {best_metrics['step']}."
    )
    card = ModelCardInfo(
        title="pocketlm tiny-lm",
        summary=(
            f"A {args.n_layers}-layer Llama-architecture causal language model pretrained from scratch by pocketlm on "
            "WikiText-2 articles and SQuAD paragraphs (the device and command are under Training run). A teaching and prototyping model: it writes "
            "fluent-looking English fragments, not facts."
        ),
        how_to_load=(
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            "from pocketlm.hub import resolve\n\n"
            f"path = resolve({args.repo_id!r})  # the local hub folder, else the Hub id\n"
            "tokenizer = AutoTokenizer.from_pretrained(path)\n"
            "model = AutoModelForCausalLM.from_pretrained(path)\n"
            "ids = tokenizer(\"The city is known for\", return_tensors=\"pt\").input_ids\n"
            "print(tokenizer.decode(model.generate(ids, do_sample=True, top_k=50, max_new_tokens=60)[0]))"
        ),
        pipeline_tag="text-generation",
        eval_dataset="Salesforce/wikitext",
        eval_dataset_name="WikiText-2 + SQuAD paragraphs (held-out documents)",
        eval_split="validation",
        metrics=metrics,
        datasets=["Salesforce/wikitext", "rajpurkar/squad"],
        license="cc-by-sa-4.0",
        tags=["llama", "pretraining", "cpu"],
        template="tiny-lm.md",
        sections={"Training run": setup, "Per epoch": table, "Curves": "![loss and perplexity](curves.png)"},
    )

    def save(folder: Path) -> None:
        shutil.copytree(result.best_dir, folder, dirs_exist_ok=True)
        (folder / "best_metrics.json").rename(folder / "best_checkpoint.json")
        for name in TRAINING_FILES:
            source = result.output_dir / name
            if source.is_file():
                target = f"training_{name}" if name.startswith("metrics.") else name
                shutil.copy2(source, folder / target)

    return publish(args.repo_id, save, card, push_to_hub=args.push_to_hub, token=args.hub_token)
