"""The pretraining loop: `TransformerLM` on prepared chunks, with `accelerate`, callbacks and resumable checkpoints.

Why a hand-written loop rather than transformers' `Trainer`: throughput (`benchmarks/pretrain_throughput.py`
times both on the same model and data), and a loop short enough to read in one go (`PretrainRun`, top to bottom).
It still uses the libraries for everything they do: `accelerate.Accelerator` (device placement, mixed
precision, gradient accumulation, DDP, seedable samplers, `save_state`/`load_state`), transformers'
`TrainerState`, `TrainerControl` and `CallbackHandler` (so any `TrainerCallback` serves both loops),
`CustomDataCollator`.

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
from pocketlm.allocator import loaded_allocator
from pocketlm.data.collator import MODES, CustomDataCollator
from pocketlm.data.corpus import default_prepared_dir, read_chunks_jsonl
from pocketlm.errors import ConfigError, PocketLMError
from pocketlm.hub import publish_repo_id, validate_repo_id
from pocketlm.io import replace_dir
from pocketlm.io import without_secrets, write_json
from pocketlm.settings import runs_dir
from pocketlm.training.checkpoints import pretrain_resume_point
from pocketlm.training.distributed import mean_over_processes
from pocketlm.training.lm_metrics import (
    GENERATION_PROMPTS, bits_per_byte, distinct_n, perplexity, token_byte_lengths, token_nll,
)
from pocketlm.training.precision import choose_precision, describe_probe

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
    torch_compile: bool = field(default=False, metadata={"help": "torch.compile the decoder layers for training (evaluation runs eager)"})
    fused_optimizer: bool = field(default=True, metadata={"help": "fused AdamW kernel (one pass over all parameters)"})
    fused_loss: bool = field(
        default=True, metadata={"help": "output projection and loss in one chunked pass, without the logits tensor"}
    )
    seed: int = 42
    logging_steps: int = 20
    save_steps: int = 100
    eval_max_chunks: int = field(default=0, metadata={"help": "evaluate on at most this many validation chunks; 0 = all"})
    eval_steps: int = field(
        default=0, metadata={"help": "also evaluate every this many steps (a learning curve within an epoch); 0 = per epoch"}
    )
    generation_tokens: int = field(default=48, metadata={"help": "tokens generated per prompt after each epoch"})
    generation_prompts: int = field(default=3, metadata={"help": "how many of the fixed prompts to sample after each epoch"})
    resume: bool = field(default=True, metadata={"help": "continue from <output_dir>/last when it exists"})
    publish: bool = field(default=True, metadata={"help": "publish the best checkpoint to the local hub folder"})
    repo_id: str = TINY_LM
    push_to_hub: bool = False
    hub_model_id: str | None = None
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
        if self.eval_steps < 0:
            raise ConfigError(f"--eval_steps must be 0 (evaluate per epoch) or positive, got {self.eval_steps}")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ConfigError("set --num_train_epochs or --max_steps to a positive value")
        validate_repo_id(self.repo_id, "--repo_id")
        if self.publish:  # --hub_model_id renames what is published; a push is checked before training
            self.repo_id = publish_repo_id(self.repo_id, self.hub_model_id, self.push_to_hub, self.hub_token)

    def training_fields(self) -> dict:
        """The arguments that shape the trained model; a checkpoint resumes only under the same ones."""
        ignored = {"resume", "publish", "repo_id", "push_to_hub", "hub_model_id", "hub_token", "logging_steps", "save_steps",
                   "eval_steps",
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
def evaluate(model, dataloader, accelerator, token_bytes: torch.Tensor | None = None) -> dict:
    """Token-weighted validation loss and perplexity over the whole loader (exact under data parallelism), and
    bits per byte when `token_bytes` (each token id's UTF-8 length, `lm_metrics.token_byte_lengths`) is given."""
    model.eval()
    nll_total, token_total, byte_total = 0.0, 0.0, 0.0
    for batch in dataloader:
        batch = without_full_attention_mask(batch)
        with accelerator.autocast():
            nll, count = token_nll(model, batch["input_ids"], batch.get("attention_mask"), batch["labels"])
        text_bytes = target_bytes(batch, token_bytes) if token_bytes is not None else torch.zeros_like(count)
        nll, count, text_bytes = accelerator.gather_for_metrics((nll, count, text_bytes))
        nll_total += nll.sum().item()
        token_total += count.sum().item()
        byte_total += text_bytes.sum().item()
    model.train()
    loss = nll_total / token_total if token_total else float("nan")
    metrics = {"eval_loss": loss, "eval_ppl": perplexity(nll_total, int(token_total)), "validation_tokens": int(token_total)}
    if byte_total:
        metrics["eval_bits_per_byte"] = bits_per_byte(nll_total, byte_total)
    return metrics


def target_bytes(batch: dict, token_bytes: torch.Tensor) -> torch.Tensor:
    """Per sequence, the UTF-8 bytes of the tokens `token_nll` predicts (the labels after the first, unpadded)."""
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    if batch.get("attention_mask") is not None:
        keep &= batch["attention_mask"][:, 1:] != 0
    return (token_bytes.to(targets.device)[targets.clamp(min=0)] * keep).sum(dim=1).float()


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
    # every process writes into `staging` (its own RNG state at least): all must be done before it is swapped in
    accelerator.wait_for_everyone()
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
    """Run (or resume) pretraining as `args` says; returns where the best checkpoint is and the history.

    Data → model factory → precision → `Accelerator` → a `PretrainRun` (optimizer, loaders, resume) → its epochs.
    `callbacks` are transformers `TrainerCallback`s; they receive the events `Trainer` sends.
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    # accelerate warns on every save that the tied lm_head is stored once; that is intended (transformers re-ties it).
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
    tokenizer, train_rows, validation_rows = load_prepared(args.data_path)
    if args.eval_max_chunks > 0:
        validation_rows = validation_rows[: args.eval_max_chunks]
    fresh_model = model_factory(args, tokenizer, chunk_length=len(train_rows[0]["input_ids"]))
    probe = torch.tensor([row["input_ids"] for row in train_rows[: min(2, len(train_rows))]])
    precision, probe_info = choose_precision(args.mixed_precision, fresh_model, probe)
    accelerator = Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    if accelerator.is_main_process and probe_info:
        log(describe_probe(precision, probe_info))
    run = PretrainRun(args, accelerator, fresh_model(), tokenizer, train_rows, validation_rows,
                      callbacks, log, run_info={"precision": precision, **probe_info})
    run.train()
    return run.result()


def model_factory(args: PretrainArguments, tokenizer, chunk_length: int):
    """A function returning the initial model, seeded: a fresh `TransformerLM`, or `--init_from`'s weights."""
    from accelerate.utils import set_seed

    from pocketlm.models.transformer_lm import TransformerLM, TransformerLMConfig

    config = TransformerLMConfig(
        vocab_size=len(tokenizer), d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads,
        d_ff=args.d_ff, max_seq_len=max(1024, chunk_length), bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    init_dir = None
    if args.init_from:
        from pocketlm.hub import resolve

        init_dir = resolve(args.init_from)
        init_vocab = TransformerLM.from_pretrained(init_dir).config.vocab_size
        if init_vocab != len(tokenizer):
            raise ConfigError(f"--init_from {args.init_from} has vocab {init_vocab}, the corpus tokenizer {len(tokenizer)}")

    def fresh_model():
        set_seed(args.seed)
        return TransformerLM.from_pretrained(init_dir) if init_dir else TransformerLM(config)

    return fresh_model


def callback_handler(callbacks, model, tokenizer, optimizer):
    """transformers' `CallbackHandler` over `callbacks`: each event reaches them with what `Trainer` passes.

    It warns when no `DefaultFlowCallback` is among them; this loop has none on purpose (that callback reads
    `TrainingArguments`' logging, evaluation and save strategies, which `logging_steps`, the per-epoch evaluation
    and `save_steps` replace here), so the warning is silenced while the handler is built.
    """
    from transformers.trainer_callback import CallbackHandler

    handler_logger = logging.getLogger("transformers.trainer_callback")
    level = handler_logger.level
    handler_logger.setLevel(logging.ERROR)
    try:
        return CallbackHandler(callbacks, model, tokenizer, optimizer, lr_scheduler=None)
    finally:
        handler_logger.setLevel(level)


class PretrainRun:
    """One run's moving parts, built once in `__init__`; `train()` drives them, epoch by epoch, step by step.

    What a checkpoint holds besides the accelerate state is `state` (transformers' `TrainerState`: step, epoch,
    log history, best metric) and `progress` (a JSON dict: position in the data, clock, token count, done).
    """

    def __init__(self, args: PretrainArguments, accelerator, model, tokenizer, train_rows, validation_rows,
                 callbacks, log, run_info: dict):
        from accelerate.utils import DistributedType
        from torch.utils.data import DataLoader
        from transformers import TrainerControl

        from pocketlm.training.callbacks import BestCheckpointCallback, MetricsWriterCallback

        self.args, self.accelerator, self.tokenizer, self.log = args, accelerator, tokenizer, log
        self.output_dir = args.output_path
        optimizer = torch.optim.AdamW(
            parameter_groups(model, args.weight_decay), lr=args.learning_rate,
            betas=(args.adam_beta1, args.adam_beta2), fused=args.fused_optimizer or None,
        )
        # Dynamic masks are seeded per batch number, not drawn from the global RNG: creating a DataLoader iterator
        # draws from that, and the loader prefetches a batch, so a resumed run would mask differently.
        self.collator = CustomDataCollator(
            tokenizer, mode=args.masking, mlm_probability=args.mlm_probability,
            static_chunk_fraction=args.static_chunk_fraction, seed=args.seed,
            dynamic_seed=args.seed * 1000 + accelerator.process_index,
        )
        train_loader = DataLoader(train_rows, batch_size=args.per_device_train_batch_size, shuffle=True,
                                  collate_fn=self.collator, drop_last=len(train_rows) >= args.per_device_train_batch_size)
        eval_loader = DataLoader(validation_rows, batch_size=args.per_device_eval_batch_size,
                                 collate_fn=CustomDataCollator(tokenizer, mode="none"))
        self.model, self.optimizer, self.train_loader, self.eval_loader = accelerator.prepare(
            model, optimizer, train_loader, eval_loader
        )
        self.unwrapped = accelerator.unwrap_model(self.model)
        if args.torch_compile:
            # Regional compilation (PyTorch's recipe): the decoder layers, in place. They are identical, so one
            # graph serves them all and compiling takes seconds; the fused loss's autograd Function would break a
            # whole-model graph, and that ran slower than eager on the 2-core CPU (benchmarks/pretrain_throughput.py).
            for layer in self.unwrapped.model.layers:
                layer.compile()

        self.token_bytes = token_byte_lengths(tokenizer)
        self.chunk_length = len(train_rows[0]["input_ids"])
        self.train_chunks = len(train_rows)
        self.batches_per_epoch = len(self.train_loader)
        steps_per_epoch = max(1, self.batches_per_epoch // args.gradient_accumulation_steps)
        self.total_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
        self.tokens_per_step = (args.per_device_train_batch_size * self.chunk_length * args.gradient_accumulation_steps
                                * accelerator.num_processes)
        self.state, self.progress = self._start_or_resume(steps_per_epoch, run_info)
        self.control = TrainerControl()
        # Under FSDP the best checkpoint is gathered from every process's shard (a collective: all of them call it).
        sharded = accelerator.distributed_type == DistributedType.FSDP
        full_state_dict = (lambda: accelerator.get_state_dict(self.model)) if sharded else None
        self.callbacks = callback_handler(
            [BestCheckpointCallback(self.output_dir / BEST_CHECKPOINT, full_state_dict=full_state_dict),
             MetricsWriterCallback(self.output_dir, title="pretraining"), *callbacks],
            self.unwrapped, tokenizer, self.optimizer,
        )
        self.budget_s = args.time_budget_minutes * 60
        self.window_losses: list[float] = []  # losses of the batches since the last log record
        self.losses_since_evaluation: list[float] = []  # the log records' mean losses since the last evaluation

    def _start_or_resume(self, steps_per_epoch: int, run_info: dict):
        """A fresh `TrainerState` and progress dict, or those of `<output_dir>/last` when resuming."""
        from transformers import TrainerState

        args, accelerator = self.args, self.accelerator
        state = TrainerState(max_steps=self.total_steps, logging_steps=args.logging_steps, save_steps=args.save_steps,
                             num_train_epochs=math.ceil(self.total_steps / steps_per_epoch),
                             train_batch_size=args.per_device_train_batch_size)
        progress = {"args": args.training_fields(), "epoch": 0, "batches_done": 0, "batches_total": 0, "elapsed_s": 0.0,
                    "train_seconds": 0.0, "tokens": 0, "done": False, **run_info}
        if args.resume and (restored := load_checkpoint(accelerator, self.output_dir, args)):
            state, progress = restored
            if accelerator.is_main_process:
                self.log(f"resuming from {self.output_dir / LAST_CHECKPOINT}: step {state.global_step}, "
                         f"epoch {progress['epoch']}")
        elif accelerator.is_main_process and (self.output_dir / LAST_CHECKPOINT).exists():
            shutil.rmtree(self.output_dir / LAST_CHECKPOINT)
            shutil.rmtree(self.output_dir / BEST_CHECKPOINT, ignore_errors=True)
        state.is_world_process_zero = accelerator.is_main_process
        state.is_local_process_zero = accelerator.is_local_main_process
        return state, progress

    # -- the run, top to bottom

    def train(self) -> None:
        """Epochs until the schedule ends; each one evaluated, sampled and checkpointed."""
        from tqdm.auto import tqdm

        args, accelerator = self.args, self.accelerator
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if accelerator.is_main_process:
            write_json(self.output_dir / "pretrain_args.json", without_secrets(asdict(args)))
            self.log(f"{self.unwrapped.num_parameters():,} parameters | {self.train_chunks:,} train chunks of "
                     f"{self.chunk_length} | {self.total_steps} steps of {self.tokens_per_step:,} tokens | precision "
                     f"{self.progress['precision']} | {accelerator.num_processes} process(es) on {accelerator.device} | "
                     f"malloc {loaded_allocator()}")
        self.control = self.callbacks.on_train_begin(args, self.state, self.control)
        self.bar = tqdm(total=self.total_steps, initial=self.state.global_step, desc="pretraining", unit="step",
                        disable=not accelerator.is_local_main_process, dynamic_ncols=True)
        self.clock = time.perf_counter()
        self.set_learning_rate()  # the first step warms up too (and a resumed one continues the schedule)
        self.model.train()
        while not self.progress["done"]:
            # A resumed run may find the schedule over but the final evaluation not yet done.
            epoch_ran_out = self.schedule_progress() < 1.0 and self.train_epoch()
            self.end_epoch(epoch_ran_out)
        self.bar.close()
        self.control = self.callbacks.on_train_end(args, self.state, self.control)

    def train_epoch(self) -> bool:
        """Optimizer steps through the rest of the current epoch: True if the epoch ran out, False if the schedule
        ended first."""
        epoch = self.progress["epoch"]
        self.train_loader.set_epoch(epoch)
        self.collator.batches_drawn = self.progress["batches_total"]
        done = self.progress["batches_done"]
        loader = self.accelerator.skip_first_batches(self.train_loader, done) if done else self.train_loader
        self.control = self.callbacks.on_epoch_begin(self.args, self.state, self.control)
        step_started = time.perf_counter()
        for batch in loader:
            self.train_batch(batch)
            if not self.accelerator.sync_gradients:
                continue  # accumulating gradients
            if self.end_step(epoch, step_started):
                return False
            step_started = time.perf_counter()
        return True

    def train_batch(self, batch: dict) -> None:
        """Forward, backward and (once `gradient_accumulation_steps` batches are in) the optimizer step."""
        batch = without_full_attention_mask(batch)
        with self.accelerator.accumulate(self.model):
            # Only the loss is needed: with --fused_loss the model computes it without the (B, T, vocab) logits.
            loss = self.model(**batch, return_logits=not self.args.fused_loss)["loss"]
            self.accelerator.backward(loss)
            if self.accelerator.sync_gradients and self.args.max_grad_norm > 0:
                self.accelerator.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.progress["batches_done"] += 1
        self.progress["batches_total"] += 1
        self.window_losses.append(mean_over_processes(self.accelerator, loss))

    def end_step(self, epoch: int, step_started: float) -> bool:
        """After an optimizer step: counters, clock, learning rate, log record, checkpoint. True when the schedule
        has ended."""
        state, progress = self.state, self.progress
        state.global_step += 1
        state.epoch = epoch + progress["batches_done"] / self.batches_per_epoch
        progress["tokens"] += self.tokens_per_step
        self.tick()
        progress["train_seconds"] += time.perf_counter() - step_started
        lr = self.set_learning_rate()
        self.bar.update(1)
        if state.global_step % self.args.logging_steps == 0:
            mean_loss = self.close_window()
            self.log_record({"step": state.global_step, "epoch": round(state.epoch, 4), "loss": mean_loss,
                             "learning_rate": lr, "tokens_per_second": progress["tokens"] / progress["train_seconds"]})
            self.bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.2e}")
        self.control = self.callbacks.on_step_end(self.args, state, self.control)
        finished = self.schedule_progress() >= 1.0
        mid_epoch = progress["batches_done"] < self.batches_per_epoch  # the epoch's end evaluates in `end_epoch`
        if not finished and mid_epoch and self.args.eval_steps > 0 and state.global_step % self.args.eval_steps == 0:
            self.evaluate_and_sample()  # a point of the learning curve
        if finished or state.global_step % self.args.save_steps == 0:
            save_checkpoint(self.accelerator, self.output_dir, state, progress)
            self.tick()
        return finished

    def end_epoch(self, ran_out: bool) -> None:
        """Evaluate, sample and checkpoint at an epoch's end (`ran_out`) or where the schedule stopped it (the run's
        last evaluation)."""
        if ran_out:
            self.progress["epoch"], self.progress["batches_done"] = self.progress["epoch"] + 1, 0
        self.evaluate_and_sample()
        self.control = self.callbacks.on_epoch_end(self.args, self.state, self.control)
        self.tick()
        self.progress["done"] = not ran_out or self.schedule_progress() >= 1.0
        save_checkpoint(self.accelerator, self.output_dir, self.state, self.progress)

    def evaluate_and_sample(self) -> None:
        """Validation perplexity, generated samples and their distinct-n, and the mean training loss since the last
        evaluation: one log record, then `on_evaluate`."""
        args, state = self.args, self.state
        self.close_window()
        # Evaluation runs eager: compiled layers would compile again for no_grad and for every new length.
        with torch.compiler.set_stance("force_eager"):
            eval_metrics = (evaluate(self.model, self.eval_loader, self.accelerator, self.token_bytes)
                            if len(self.eval_loader) else {})
            prompts = GENERATION_PROMPTS[: args.generation_prompts]
            samples = (sample_texts(self.unwrapped, self.tokenizer, prompts, args.generation_tokens, seed=args.seed)
                       if prompts else [])
        record = {
            "step": state.global_step, "epoch": round(state.epoch, 4),
            "train_loss": (sum(self.losses_since_evaluation) / len(self.losses_since_evaluation)
                           if self.losses_since_evaluation else float("nan")),
            **eval_metrics,
            "gen_distinct_1": distinct_n(samples, 1), "gen_distinct_2": distinct_n(samples, 2),
            "elapsed_s": round(self.progress["elapsed_s"], 1),
        }
        self.log_record(record)
        if self.accelerator.is_main_process:
            sample = f" | sample: {samples[0][:80]!r}" if samples else ""
            self.log(f"epoch {state.epoch:.2f} | step {state.global_step} | train loss {record['train_loss']:.3f} | "
                     f"val ppl {record.get('eval_ppl', float('nan')):.1f} | distinct-1/2 {record['gen_distinct_1']:.2f}/"
                     f"{record['gen_distinct_2']:.2f}{sample}")
            with (self.output_dir / "samples.jsonl").open("a") as f:
                f.write(json.dumps({"step": state.global_step, "epoch": state.epoch, "samples": dict(zip(prompts, samples))}) + "\n")
        self.losses_since_evaluation = []
        self.control = self.callbacks.on_evaluate(args, state, self.control, metrics=record)

    def result(self) -> PretrainResult:
        """Write `summary.json` (the headline numbers of the run) and return the result."""
        state, progress = self.state, self.progress
        summary = {
            "best_eval_ppl": state.best_metric, "best_step": state.best_global_step, "steps": state.global_step,
            "epochs": state.epoch, "train_tokens": progress["tokens"], "elapsed_s": progress["elapsed_s"],
            "tokens_per_second": progress["tokens"] / progress["train_seconds"] if progress["train_seconds"] else 0.0,
            "precision": progress["precision"], "parameters": self.unwrapped.num_parameters(),
            **{k: v for k, v in progress.items() if k.startswith("probe_")},
        }
        if self.accelerator.is_main_process:
            write_json(self.output_dir / "summary.json", summary)
        self.accelerator.wait_for_everyone()
        return PretrainResult(self.output_dir, self.output_dir / BEST_CHECKPOINT, state.log_history, summary)

    # -- small helpers

    def schedule_progress(self) -> float:
        """How far the learning-rate schedule is: the larger of step progress and time-budget progress."""
        by_steps = self.state.global_step / self.total_steps
        by_time = self.progress["elapsed_s"] / self.budget_s if self.budget_s else 0.0
        return max(by_steps, by_time)

    def set_learning_rate(self) -> float:
        lr = learning_rate_at(self.args, self.state.global_step, self.schedule_progress())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def tick(self) -> None:
        """Add the wall-clock time since the last tick to `progress["elapsed_s"]` (the time budget's clock)."""
        now = time.perf_counter()
        self.progress["elapsed_s"] += now - self.clock
        self.clock = now

    def close_window(self) -> float | None:
        """Fold the batch losses since the last log record into one mean (kept for the epoch's train loss)."""
        if not self.window_losses:
            return None
        mean_loss = sum(self.window_losses) / len(self.window_losses)
        self.losses_since_evaluation.append(mean_loss)
        self.window_losses = []
        return mean_loss

    def log_record(self, record: dict) -> None:
        self.state.log_history.append(record)
        self.control = self.callbacks.on_log(self.args, self.state, self.control, logs=record)


# ---------------------------------------------------------------- publishing

TRAINING_FILES = ("metrics.json", "metrics.csv", "curves.png", "samples.jsonl", "summary.json", "pretrain_args.json")


def corpus_description(corpus_stats: dict) -> str:
    """What the model read, from the prepared corpus's `stats.json`: the default corpus, plus the extra one's words."""
    base = "WikiText-2 articles and SQuAD paragraphs"
    if not corpus_stats.get("words"):
        return base
    extra = corpus_stats.get("extra_words", 0)
    if not extra:
        return f"{base} ({corpus_stats['words']:,} words)"
    return (f"{base} ({corpus_stats['words'] - extra:,} words) and {extra:,} words of English Wikipedia articles "
            "added by `prepare_corpus.py --extra_corpus wikipedia-en-2014` (validation stays on held-out WikiText-2 "
            "documents)")


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
    if "eval_bits_per_byte" in best_metrics:
        metrics["bits_per_byte"] = best_metrics["eval_bits_per_byte"]
    evaluations = [r for r in result.history if "eval_ppl" in r]
    table = "\n".join(
        ["| epoch | step | train loss | validation loss | validation PPL | bits per byte | distinct-1 | distinct-2 |",
         "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        + [f"| {r['epoch']:.2f} | {r['step']} | {r['train_loss']:.3f} | {r['eval_loss']:.3f} | {r['eval_ppl']:.1f} | "
           f"{r.get('eval_bits_per_byte', float('nan')):.3f} | {r['gen_distinct_1']:.3f} | {r['gen_distinct_2']:.3f} |"
           for r in evaluations]
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
            f"{corpus_description(corpus_stats)}. The device and command are under Training run. A teaching and "
            "prototyping model: it writes fluent-looking English fragments, not facts."
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
        sections={"Training run": setup, "Evaluations": table, "Curves": "![loss and perplexity](curves.png)"},
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
