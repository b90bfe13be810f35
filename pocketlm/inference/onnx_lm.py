"""Torch-free text generation: a numpy decode loop over the LM's ONNX export with its KV cache.

Why this path and not onnxruntime-genai (DESIGN.md measured both): genai's `generate` is faster per token
(19–23 ms vs ~30 ms for 32 tokens at batch 1), but both are far under the server's 200 ms budget, and
owning the ~100-line loop below over the plain KV-cache graph (`pocketlm.inference.lm_export`) is what lets
the batching schemes be explicit:
left padding with an attention mask (dynamic padding: each batch pads only to its own longest prompt),
position ids that count real tokens only (so a padded prompt sees the RoPE angles it would see alone),
per-row stopping at EOS, and token-by-token streaming — all with numpy and onnxruntime only, so the REST
server never imports torch or transformers (DESIGN.md: those imports alone cost 1.4 s and 2.6–3 s).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pocketlm.errors import ConfigError
from pocketlm.inference.qa_engine import pick_onnx_file


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen. `do_sample=False` is greedy (deterministic); else top-k sampling."""

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    seed: int | None = None
    stop_at_eos: bool = True
    """False keeps generating past the end-of-text token (benchmarks use it to time a fixed token count)."""


def session_options(intra_op_num_threads: int | None = None):
    """ONNX Runtime CPU options shared by every session pocketlm opens (LM and QA): a fixed thread count (default:
    the cores, at most 4), full graph optimisation."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_num_threads or min(os.cpu_count() or 1, 4)
    options.inter_op_num_threads = 1
    return options


def cpu_session(model_path: str | Path, intra_op_num_threads: int | None = None, disabled_optimizers: Sequence[str] = ()):
    """An onnxruntime CPU session whose optimised graph is cached on disk after the first load.

    Optimising a graph at load time costs 0.15-0.25 s per model here, a quarter of the REST server's one-second
    start-up budget; loading the cached result with optimisation off takes half that or less. The cache is keyed by the
    graph's size and mtime and the onnxruntime version (the optimised graph may use this CPU's kernels, so it is
    kept per machine, under the runs folder); a cache that cannot be written just costs the slower load. Writing
    a new version removes the older ones of the same graph (a republished model would otherwise leave them behind).
    `disabled_optimizers` names ONNX Runtime graph transformers to skip (`QA_DISABLED_FUSIONS` says why).
    """
    import onnxruntime as ort

    from pocketlm.settings import runs_dir

    model_path = Path(model_path)
    options = session_options(intra_op_num_threads)
    stat = model_path.stat()
    disabled = sorted(disabled_optimizers)
    graph = hashlib.sha1(f"{model_path.resolve()}|{disabled}".encode()).hexdigest()[:12]  # which graph, loaded how
    version = hashlib.sha1(f"{stat.st_size}|{stat.st_mtime_ns}|{ort.__version__}".encode()).hexdigest()[:12]
    cached = runs_dir() / "ort-cache" / f"{model_path.stem}-{graph}-{version}.onnx"
    providers = ["CPUExecutionProvider"]
    if cached.is_file():
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return ort.InferenceSession(str(cached), options, providers=providers)
    staging = cached.with_name(f".{cached.name}.{os.getpid()}")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        options.optimized_model_filepath = str(staging)
        options.log_severity_level = 3  # ORT warns that the graph is hardware-specific: this cache never leaves the machine
        session = ort.InferenceSession(str(model_path), options, providers=providers, disabled_optimizers=disabled)
    except (OSError, RuntimeError):  # e.g. a read-only runs folder: load without the cache (a model error re-raises here)
        return ort.InferenceSession(str(model_path), session_options(intra_op_num_threads), providers=providers,
                                    disabled_optimizers=disabled)
    try:
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

    def __init__(self, folder: str | Path, *, quantized: bool = False, intra_op_num_threads: int | None = None,
                 prepend_bos: bool = True):
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        self.onnx_path = pick_onnx_file(self.folder, quantized)
        config = json.loads((self.folder / "config.json").read_text())
        self.num_layers = config["num_hidden_layers"]
        self.max_positions = config.get("max_position_embeddings", 2048)
        eos = config.get("eos_token_id")
        self.eos_token_id = eos[0] if isinstance(eos, list) else eos
        self.bos_token_id = config.get("bos_token_id") if prepend_bos else None
        pad = config.get("pad_token_id")
        self.pad_token_id = pad if pad is not None else (self.eos_token_id or 0)
        self.tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        self.session = cpu_session(self.onnx_path, intra_op_num_threads)
        inputs = {i.name: i for i in self.session.get_inputs()}
        cache = inputs.get("past_key_values.0.key")
        if cache is None:
            raise ConfigError(f"{self.onnx_path} has no KV-cache inputs: export it with task 'text-generation-with-past'")
        _, self.kv_heads, _, self.head_dim = cache.shape
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

    # -- decoding -----------------------------------------------------------------------------------------
    def _empty_cache(self, batch: int) -> dict[str, np.ndarray]:
        shape = (batch, self.kv_heads, 0, self.head_dim)
        return {
            f"past_key_values.{i}.{kind}": np.zeros(shape, self.cache_dtype)
            for i in range(self.num_layers)
            for kind in ("key", "value")
        }

    def decode_steps(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams, use_cache: bool = True
    ) -> Iterator[np.ndarray]:
        """Yield the next token of every row, one step at a time: the shared core of both batching schemes.

        Prompts are left-padded to the longest in *this* batch (dynamic padding) and masked; finished rows
        (EOS reached) keep stepping with the pad token, their outputs ignored, until all rows are done.
        `use_cache=False` re-runs the whole sequence at every step instead of feeding the KV cache — the
        naive loop, kept as the benchmark's reference for what the cache saves.
        """
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ConfigError("every prompt needs at least one token")
        longest = max(len(p) for p in prompts)
        if longest + params.max_new_tokens > self.max_positions:
            raise ConfigError(
                f"prompt of {longest} tokens + max_new_tokens {params.max_new_tokens} exceeds the model's "
                f"{self.max_positions} positions"
            )
        batch = len(prompts)
        input_ids = np.full((batch, longest), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((batch, longest), dtype=np.int64)
        for row, ids in enumerate(prompts):
            input_ids[row, longest - len(ids) :] = ids
            attention_mask[row, longest - len(ids) :] = 1
        # Positions count real tokens only: a left-padded prompt gets the same RoPE angles as when alone.
        position_ids = np.clip(attention_mask.cumsum(-1) - 1, 0, None)
        cache = self._empty_cache(batch)
        finished = np.zeros(batch, dtype=bool)
        rng = np.random.default_rng(params.seed)
        for _ in range(params.max_new_tokens):
            feed = {"input_ids": input_ids, "attention_mask": attention_mask, **cache}
            if self.uses_position_ids:
                feed["position_ids"] = position_ids
            logits, *presents = self.session.run(self.output_names, feed)
            next_ids = choose_next_tokens(logits[:, -1, :], params, rng)
            next_ids = np.where(finished, self.pad_token_id, next_ids)
            yield next_ids
            if params.stop_at_eos and self.eos_token_id is not None:
                finished |= next_ids == self.eos_token_id
                if finished.all():
                    return
            attention_mask = np.concatenate([attention_mask, np.ones((batch, 1), np.int64)], axis=1)
            if use_cache:
                cache = dict(zip(cache, presents, strict=True))
                input_ids = next_ids[:, None].astype(np.int64)
                position_ids = position_ids[:, -1:] + 1
            else:
                input_ids = np.concatenate([input_ids, next_ids[:, None].astype(np.int64)], axis=1)
                position_ids = np.concatenate([position_ids, position_ids[:, -1:] + 1], axis=1)

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
        """`stream_ids` plus the text each token adds; a byte-level token that ends mid-character yields ''."""
        from tokenizers.decoders import DecodeStream

        decoder = DecodeStream(ids=list(prompt), skip_special_tokens=True)
        for token in self.stream_ids(prompt, params):
            yield token, decoder.step(self.tokenizer, token) or ""


def choose_next_tokens(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> np.ndarray:
    """Greedy argmax, or top-k sampling at `temperature` (softmax over the k best logits of each row)."""
    if not params.do_sample or params.temperature <= 0:
        return logits.argmax(-1)
    logits = logits.astype(np.float64) / params.temperature
    k = min(params.top_k, logits.shape[-1]) if params.top_k > 0 else logits.shape[-1]
    top = np.argpartition(-logits, k - 1, axis=-1)[:, :k]
    top_logits = np.take_along_axis(logits, top, axis=-1)
    probs = np.exp(top_logits - top_logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    picks = [rng.choice(k, p=row) for row in probs]
    return top[np.arange(len(top)), picks]
