"""Torch-free text generation: a numpy decode loop over the LM's ONNX export with its KV cache.

Why this path and not onnxruntime-genai (docs/design.md): genai's `generate` is faster per token, but both are
far under the server's 200 ms budget, and owning the ~100-line loop below over the plain KV-cache graph
(`pocketlm.inference.lm_export`) is what lets the batching schemes be explicit:
left padding with an attention mask (dynamic padding: each batch pads only to its own longest prompt),
position ids that count real tokens only (so a padded prompt sees the RoPE angles it would see alone),
per-row stopping at EOS, and token-by-token streaming — all with numpy and onnxruntime only, so the REST
server never imports torch or transformers (their imports alone take longer than the server's start-up budget).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pocketlm.errors import ConfigError
from pocketlm.io import fsync_path
from pocketlm.inference.qa_engine import pick_onnx_file

LM_PRECISIONS = ("fp32", "int8", "int8-static")
"""The LM graphs an export may hold: fp32 (`model.onnx`), dynamic int8 (`model_quantized.onnx`: activation scales
measured per call, so a row's tokens depend on the rows batched with it) and static int8
(`model_static_quantized.onnx`: scales fixed at export, so batching changes nothing; see
`pocketlm.inference.lm_export.quantize_static_int8`)."""
STATIC_INT8_FILE = "model_static_quantized.onnx"
BATCH_STABLE_PRECISIONS = ("fp32", "int8-static")
"""Precisions whose greedy tokens are the same whether a prompt is decoded alone or in a batch."""


def lm_graph_file(folder: Path, precision: str) -> Path:
    """The graph of an LM export folder for `precision` (one of `LM_PRECISIONS`), with an error that says what to
    do when the export has no such graph."""
    from pocketlm.hub import ArtifactNotFoundError

    if precision not in LM_PRECISIONS:
        raise ConfigError(f"unknown LM precision {precision!r}: choose one of {', '.join(LM_PRECISIONS)}")
    if precision != "int8-static":
        return pick_onnx_file(folder, quantized=precision == "int8")
    if not (folder / STATIC_INT8_FILE).is_file():
        raise ArtifactNotFoundError(f"no {STATIC_INT8_FILE} in {folder}: export it again with "
                                    "training_scripts/export_lm_onnx.py (it writes the static int8 graph)")
    return folder / STATIC_INT8_FILE


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen. `do_sample=False` is greedy (deterministic); else top-k (and top-p) sampling."""

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    """0: no top-k cut (the whole vocabulary)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the most likely tokens whose probabilities add up to `top_p` (1: all of the top-k)."""
    seed: int | None = None
    stop_at_eos: bool = True
    """False keeps generating past the end-of-text token (benchmarks use it to time a fixed token count)."""
    max_time: float | None = None
    """Seconds of wall clock after which decoding stops between two steps (as transformers' `max_time`);
    the server's compute budget per call. None: no limit."""


def session_options(intra_op_num_threads: int | None = None, spinning: bool = True):
    """ONNX Runtime CPU options shared by every session pocketlm opens (LM and QA): a fixed thread count (default:
    the cores, at most 4), full graph optimisation. `spinning=False` lets the intra-op threads sleep between
    operators instead of busy-waiting for the next one: what a server wants, whose cores also run its event
    loop (and, in the suite, Gradio and torch) — spinning threads take the cores those need, and on a shared
    host they make every graph call several times slower."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_num_threads or min(os.cpu_count() or 1, 4)
    options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def cpu_session(model_path: str | Path, intra_op_num_threads: int | None = None, disabled_optimizers: Sequence[str] = (),
                spinning: bool = True):
    """An onnxruntime CPU session whose optimised graph is cached on disk after the first load.

    Optimising a graph at load time costs 0.15-0.25 s per model here, a quarter of the REST server's one-second
    start-up budget; loading the cached result with optimisation off takes half that or less. The cache is keyed by the
    graph's size and mtime and the onnxruntime version (the optimised graph may use this CPU's kernels, so it is
    kept per machine, under the runs folder); a cache that cannot be written just costs the slower load, and one
    that does not load (a truncated or corrupted file) is deleted and rebuilt, with one warning. Writing a new
    version removes the older ones of the same graph (a republished model would otherwise leave them behind).
    `disabled_optimizers` names ONNX Runtime graph transformers to skip (`QA_DISABLED_FUSIONS` says why);
    `spinning`: see `session_options`.
    """
    import onnxruntime as ort

    from pocketlm.settings import runs_dir

    model_path = Path(model_path)
    options = session_options(intra_op_num_threads, spinning)
    stat = model_path.stat()
    disabled = sorted(disabled_optimizers)
    graph = hashlib.sha1(f"{model_path.resolve()}|{disabled}".encode()).hexdigest()[:12]  # which graph, loaded how
    version = hashlib.sha1(f"{stat.st_size}|{stat.st_mtime_ns}|{ort.__version__}".encode()).hexdigest()[:12]
    cached = runs_dir() / "ort-cache" / f"{model_path.stem}-{graph}-{version}.onnx"
    providers = ["CPUExecutionProvider"]
    if cached.is_file():
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            return ort.InferenceSession(str(cached), options, providers=providers)
        except Exception as err:  # ORT's own exception types: whatever is wrong with our cache, rebuild it
            logging.getLogger(__name__).warning("ONNX Runtime cache %s does not load (%s): rebuilding it from %s",
                                                cached, str(err).splitlines()[0][:200], model_path)
            cached.unlink(missing_ok=True)
            options = session_options(intra_op_num_threads, spinning)
    staging = cached.with_name(f".{cached.name}.{os.getpid()}")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        options.optimized_model_filepath = str(staging)
        options.log_severity_level = 3  # ORT warns that the graph is hardware-specific: this cache never leaves the machine
        session = ort.InferenceSession(str(model_path), options, providers=providers, disabled_optimizers=disabled)
    except (OSError, RuntimeError):  # e.g. a read-only runs folder: load without the cache (a model error re-raises here)
        return ort.InferenceSession(str(model_path), session_options(intra_op_num_threads, spinning), providers=providers,
                                    disabled_optimizers=disabled)
    try:
        fsync_path(staging)  # a cache file torn by a power cut would otherwise pass for a complete one
        os.replace(staging, cached)
    except OSError:  # the session is good; only the cache is lost, so the next start optimises again
        staging.unlink(missing_ok=True)
        return session
    for stale in cached.parent.glob(f"{model_path.stem}-{graph}-*.onnx"):
        if stale != cached:
            stale.unlink(missing_ok=True)
    return session


class OnnxCausalLM:
    """A decoder-only LM exported with its KV cache (`pocketlm.inference.lm_export`), run with onnxruntime.

    The graph takes `input_ids`, `attention_mask`, `position_ids` and `past_key_values.{i}.key/value`
    (batch, kv_heads, past_len, head_dim) and returns `logits` and `present.{i}.key/value`: each step feeds
    only the new token and the cache of everything before it, so a step costs O(1) in the sequence length.
    """

    def __init__(self, folder: str | Path, *, precision: str = "fp32", intra_op_num_threads: int | None = None,
                 prepend_bos: bool = True, spinning: bool = True):
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        self.precision = precision
        self.onnx_path = lm_graph_file(self.folder, precision)
        config = json.loads((self.folder / "config.json").read_text())
        self.max_positions = config.get("max_position_embeddings", config.get("n_positions", 2048))  # Llama, gpt2
        eos = config.get("eos_token_id")
        self.eos_token_id = eos[0] if isinstance(eos, list) else eos
        self.bos_token_id = config.get("bos_token_id") if prepend_bos else None
        pad = config.get("pad_token_id")
        self.pad_token_id = pad if pad is not None else (self.eos_token_id or 0)
        self.tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        self.session = cpu_session(self.onnx_path, intra_op_num_threads, spinning=spinning)
        inputs = {i.name: i for i in self.session.get_inputs()}
        cache = inputs.get("past_key_values.0.key")
        if cache is None:
            raise ConfigError(f"{self.onnx_path} has no KV-cache inputs: export it with task 'text-generation-with-past'")
        _, self.kv_heads, _, self.head_dim = cache.shape
        self.num_layers = sum(name.startswith("past_key_values.") and name.endswith(".key") for name in inputs)
        self.cache_dtype = np.float16 if cache.type == "tensor(float16)" else np.float32
        self.uses_position_ids = "position_ids" in inputs
        self.output_names = [o.name for o in self.session.get_outputs()]

    # -- tokenisation -------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of `text` as the exported tokenizer produces them, after the BOS token.

        pocketlm's LM is trained on documents joined by `<|endoftext|>` (its BOS and EOS), so a prompt that
        follows one is read as the start of a document, as the pretraining samples are generated. The
        tokenizer itself adds nothing; `prepend_bos=False` gives transformers' pipeline behaviour.
        """
        ids = self.tokenizer.encode(text).ids
        if self.bos_token_id is not None and ids[:1] != [self.bos_token_id]:
            ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def max_prompt_tokens(self, max_new_tokens: int) -> int:
        """Longest prompt that leaves room for `max_new_tokens` within the positions the model was trained on."""
        return self.max_positions - max_new_tokens

    def prompt_problem(self, ids: Sequence[int], max_new_tokens: int) -> str | None:
        """Why the encoded prompt `ids` cannot be continued by `max_new_tokens` tokens, or None: one wording for the
        REST API's 422 and the Spaces' message."""
        if not ids:
            return "the prompt encodes to no token"
        limit = self.max_prompt_tokens(max_new_tokens)
        if len(ids) > limit:
            return (f"the prompt is {len(ids)} tokens; with max_new_tokens={max_new_tokens} at most {limit} fit "
                    f"the model's {self.max_positions}-token context")
        return None

    # -- decoding -----------------------------------------------------------------------------------------
    def _empty_cache(self, batch: int) -> dict[str, np.ndarray]:
        shape = (batch, self.kv_heads, 0, self.head_dim)
        return {
            f"past_key_values.{i}.{kind}": np.zeros(shape, self.cache_dtype)
            for i in range(self.num_layers)
            for kind in ("key", "value")
        }

    def _left_padded(self, prompts: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Input ids, attention mask and position ids of `prompts` left-padded to the longest of them."""
        longest = max(len(p) for p in prompts)
        input_ids = np.full((len(prompts), longest), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(prompts), longest), dtype=np.int64)
        for row, ids in enumerate(prompts):
            input_ids[row, longest - len(ids) :] = ids
            attention_mask[row, longest - len(ids) :] = 1
        # Positions count real tokens only: a left-padded prompt gets the same RoPE angles as when alone.
        position_ids = np.clip(attention_mask.cumsum(-1) - 1, 0, None)
        return input_ids, attention_mask, position_ids

    def _run(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
             cache: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One graph call: the last position's logits (batch, vocab) and the cache with the new tokens in it."""
        feed = {"input_ids": input_ids, "attention_mask": attention_mask, **cache}
        if self.uses_position_ids:
            feed["position_ids"] = position_ids
        logits, *presents = self.session.run(self.output_names, feed)
        return logits[:, -1, :], dict(zip(cache, presents, strict=True))

    def prefill(self, prompts: Sequence[Sequence[int]]) -> tuple[np.ndarray, KVState]:
        """Run `prompts` (left-padded together) through the graph: each one's next-token logits, and the
        batch state that `decode_step` continues from."""
        input_ids, attention_mask, position_ids = self._left_padded(prompts)
        logits, cache = self._run(input_ids, attention_mask, position_ids, self._empty_cache(len(prompts)))
        return logits, KVState(cache, attention_mask, position_ids[:, -1] + 1)

    def decode_step(self, state: KVState, tokens: np.ndarray) -> tuple[np.ndarray, KVState]:
        """Feed each row's newest token (`tokens`, one per row of `state`) with the cache of everything before
        it: the next-token logits, and the state with those tokens cached."""
        attention_mask = np.concatenate([state.attention_mask, np.ones((state.rows, 1), np.int64)], axis=1)
        logits, cache = self._run(np.asarray(tokens, np.int64)[:, None], attention_mask,
                                  state.next_positions[:, None], state.cache)
        return logits, KVState(cache, attention_mask, state.next_positions + 1)

    def decode_steps(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams, use_cache: bool = True
    ) -> Iterator[np.ndarray]:
        """Yield the next token of every row, one step at a time: the shared core of both batching schemes.

        Prompts are left-padded to the longest in *this* batch (dynamic padding) and masked; finished rows
        (EOS reached) keep stepping with the pad token, their outputs ignored, until all rows are done.
        `use_cache=False` re-runs the whole sequence at every step instead of feeding the KV cache — the
        naive loop, kept as the benchmark's reference for what the cache saves.
        """
        self.check_prompts(prompts, params.max_new_tokens)
        batch = len(prompts)
        input_ids, attention_mask, position_ids = self._left_padded(prompts)
        state = None
        finished = np.zeros(batch, dtype=bool)
        rng = np.random.default_rng(params.seed)
        deadline = None if params.max_time is None else time.monotonic() + params.max_time
        for _ in range(params.max_new_tokens):
            if not use_cache:
                logits, _ = self._run(input_ids, attention_mask, position_ids, self._empty_cache(batch))
            elif state is None:
                logits, state = self.prefill(prompts)
            else:
                logits, state = self.decode_step(state, next_ids)
            next_ids = choose_next_tokens(logits, params, rng)
            next_ids = np.where(finished, self.pad_token_id, next_ids)
            yield next_ids
            if params.stop_at_eos and self.eos_token_id is not None:
                finished |= next_ids == self.eos_token_id
                if finished.all():
                    return
            if deadline is not None and time.monotonic() > deadline:
                return
            if not use_cache:
                attention_mask = np.concatenate([attention_mask, np.ones((batch, 1), np.int64)], axis=1)
                input_ids = np.concatenate([input_ids, next_ids[:, None].astype(np.int64)], axis=1)
                position_ids = np.concatenate([position_ids, position_ids[:, -1:] + 1], axis=1)

    def check_prompts(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> None:
        """`ConfigError` unless every prompt has a token and leaves room for `max_new_tokens` in the context."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ConfigError("every prompt needs at least one token")
        longest = max(len(p) for p in prompts)
        if longest + max_new_tokens > self.max_positions:
            raise ConfigError(
                f"prompt of {longest} tokens + max_new_tokens {max_new_tokens} exceeds the model's "
                f"{self.max_positions} positions"
            )

    def generate_ids(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[int]]:
        """Full batch: all prompts in one padded batch; returns each row's new tokens (EOS included, pads not)."""
        outputs: list[list[int]] = [[] for _ in prompts]
        done = [False] * len(prompts)
        for step in self.decode_steps(prompts, params):
            for row, token in enumerate(step.tolist()):
                if done[row]:
                    continue
                outputs[row].append(token)
                done[row] = params.stop_at_eos and token == self.eos_token_id
        return outputs

    def stream_ids(self, prompt: Sequence[int], params: SamplingParams, use_cache: bool = True) -> Iterator[int]:
        """Token by token: one prompt alone, each new token yielded as soon as it is produced."""
        for step in self.decode_steps([prompt], params, use_cache):
            yield int(step[0])

    def stream_text(self, prompt: Sequence[int], params: SamplingParams) -> Iterator[tuple[int, str]]:
        """`stream_ids` plus the text each token adds (see `text_decoder`)."""
        text_of = self.text_decoder(prompt)
        for token in self.stream_ids(prompt, params):
            yield token, text_of(token)

    def text_decoder(self, prompt: Sequence[int]) -> Callable[[int], str]:
        """A function from each next token of a continuation of `prompt` to the text it adds; a byte-level token
        that ends mid-character adds '' (its bytes come out with the token that completes the character)."""
        from tokenizers.decoders import DecodeStream

        decoder = DecodeStream(ids=list(prompt), skip_special_tokens=True)
        return lambda token: decoder.step(self.tokenizer, token) or ""


@dataclass
class KVState:
    """A decode batch between two graph calls: each row's KV cache, which cache columns are real, and where
    each row's next token sits.

    Rows are right-aligned (left padding): every row's newest token is in the last column, and a row's padding
    is a prefix of its mask. That is what lets rows of different lengths join one batch (`concat`: the shorter
    caches get masked zero columns on the left) and leave it (`select`: drop rows, then the columns that are
    padding in every row left) while each row still attends to exactly its own tokens at its own positions.
    Hand-written because optimum/transformers have no cache type that merges batches for an ONNX graph.
    """

    cache: dict[str, np.ndarray]
    """`past_key_values.{i}.key/value`, each (rows, kv_heads, length, head_dim)."""
    attention_mask: np.ndarray
    """(rows, length) int64: 1 for a real token, 0 for padding."""
    next_positions: np.ndarray
    """(rows,) the RoPE position of each row's next token: its real token count so far."""

    @property
    def rows(self) -> int:
        return self.attention_mask.shape[0]

    @property
    def length(self) -> int:
        return self.attention_mask.shape[1]

    def select(self, rows: Sequence[int]) -> KVState:
        """Only `rows` (indices, in this order), without the leading columns that are padding in all of them."""
        index = np.asarray(rows, dtype=np.int64)
        mask = self.attention_mask[index]
        start = int(mask.argmax(1).min()) if len(index) else self.length  # first real column of the longest row
        first = int(index[0]) if len(index) else 0
        if np.array_equal(index, np.arange(first, first + len(index))) and start < self.length // 4:
            # One block of rows (a continuous batch's oldest rows finish first) and little padding to drop: views of
            # the block, no copy — the cache is copied by the next step's graph anyway, and the few masked columns
            # kept cost less than copying every layer's cache here.
            block = slice(first, first + len(index))
            return KVState({name: array[block] for name, array in self.cache.items()}, self.attention_mask[block],
                           self.next_positions[block])
        # `take` of a column slice (a view) copies each kept row once, into a contiguous array: fancy indexing
        # first and `ascontiguousarray` after copied the cache twice whenever padding columns were dropped
        return KVState({name: np.take(array[:, :, start:], index, axis=0) for name, array in self.cache.items()},
                       np.ascontiguousarray(mask[:, start:]), self.next_positions[index])

    @staticmethod
    def concat(states: Sequence[KVState]) -> KVState:
        """The rows of `states` in one batch, every cache left-padded with masked zeros to the longest."""
        length = max(state.length for state in states)
        return KVState(
            {name: _stacked_right_aligned([state.cache[name] for state in states], length, axis=2)
             for name in states[0].cache},
            _stacked_right_aligned([state.attention_mask for state in states], length, axis=1),
            np.concatenate([state.next_positions for state in states]),
        )


def _stacked_right_aligned(parts: Sequence[np.ndarray], length: int, axis: int) -> np.ndarray:
    """`parts` stacked along rows, each ending at column `length` of `axis` with zeros before it: one copy of
    each part into one zeroed array (padding each part first, then concatenating, copied the padded ones twice)."""
    shape = list(parts[0].shape)
    shape[0], shape[axis] = sum(len(part) for part in parts), length
    stacked = np.zeros(shape, parts[0].dtype)
    row = 0
    for part in parts:
        where = [slice(row, row + len(part))] + [slice(None)] * (part.ndim - 1)
        where[axis] = slice(length - part.shape[axis], length)
        stacked[tuple(where)] = part
        row += len(part)
    return stacked


def _nucleus(probs: np.ndarray, top_p: float) -> np.ndarray:
    """`probs` (unnormalised, one row per sequence) with all but each row's nucleus zeroed: the most likely
    tokens, best first, until their share of the row's mass reaches `top_p` (the best token always stays)."""
    order = np.argsort(-probs, axis=-1, kind="stable")
    ranked = np.take_along_axis(probs, order, axis=-1)
    before = np.cumsum(ranked, axis=-1) - ranked  # the mass of the better tokens
    keep_ranked = before < top_p * ranked.sum(-1, keepdims=True)
    keep_ranked[:, 0] = True
    keep = np.zeros_like(keep_ranked)
    np.put_along_axis(keep, order, keep_ranked, axis=-1)
    return np.where(keep, probs, 0.0)


def choose_next_tokens(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> np.ndarray:
    """Greedy argmax, or top-k sampling at `temperature` (softmax over the k best logits of each row), cut to
    the top-p nucleus when `top_p` < 1.

    Numerically safe for any positive temperature: the best logit is subtracted *before* dividing, so every
    scaled logit is <= 0 and `exp` cannot overflow (dividing first turns `logit / 1e-310` into inf and the
    softmax into NaN); non-finite logits count as impossible, and a row left with no finite choice falls
    back to its argmax.
    """
    if not params.do_sample or params.temperature <= 0:
        return logits.argmax(-1)
    logits = np.where(np.isfinite(logits), logits.astype(np.float64), -np.inf)
    k = min(params.top_k, logits.shape[-1]) if params.top_k > 0 else logits.shape[-1]
    top = np.argpartition(-logits, k - 1, axis=-1)[:, :k]
    top_logits = np.take_along_axis(logits, top, axis=-1)
    best = top_logits.max(-1, keepdims=True)
    best = np.where(np.isfinite(best), best, 0.0)  # a row of -inf only: left at -inf, not NaN
    with np.errstate(over="ignore", under="ignore"):  # (x - best) / 1e-310 is -inf, and exp(-inf) is 0: as meant
        probs = np.exp((top_logits - best) / params.temperature)
    if params.top_p < 1.0:
        probs = _nucleus(probs, params.top_p)
    totals = probs.sum(-1, keepdims=True)
    picks = [
        rng.choice(k, p=row / total) if total > 0 and np.isfinite(total) else int(np.argmax(row_logits))
        for row, total, row_logits in zip(probs, totals[:, 0], top_logits)
    ]
    return top[np.arange(len(top)), picks]
