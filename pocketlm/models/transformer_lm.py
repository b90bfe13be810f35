"""A small, readable decoder-only Transformer language model (Llama architecture: RoPE, RMSNorm, SwiGLU).

Written out in full, nanoGPT-style, so each part can be read in one sitting — yet every parameter carries
the name that transformers' `LlamaForCausalLM` gives it, and `save_pretrained` writes a standard
`config.json` + `model.safetensors`. The checkpoint therefore loads with
`AutoModelForCausalLM.from_pretrained(path)` and `pipeline("text-generation")` with no custom code, and it
exports to ONNX with `torch.onnx` (`pocketlm.inference.lm_export`) like any Llama. (docs/design.md says why Llama and not GPT-2.)

Shapes in comments: B batch, T sequence length, C d_model, H heads, D head_dim = C / H.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from pocketlm.io import atomic_write, write_json
from pocketlm.models.linear_cross_entropy import linear_cross_entropy

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class TransformerLMConfig:
    """Hyper-parameters. The defaults are pocketlm's tiny LM: 4 layers, d_model 256, ~5.2M parameters."""

    vocab_size: int = 8000
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    """Fewer key/value heads than query heads gives grouped-query attention; None means as many as `n_heads`."""
    d_ff: int = 688
    """SwiGLU width: about 8/3 × d_model, so the three FFN matrices cost what a 4× GELU MLP's two would."""
    max_seq_len: int = 1024
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    """Share the input embedding with the output projection: at vocab 8000 × 256 that saves 2M parameters."""
    dropout: float = 0.0
    init_std: float = 0.02
    bos_token_id: int | None = 0
    eos_token_id: int | None = 0
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.kv_heads})")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_llama_dict(self) -> dict:
        """The equivalent transformers `LlamaConfig`, as the dict `config.json` holds."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.d_model,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.d_ff,
            "max_position_embeddings": self.max_seq_len,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},  # transformers 5's form
            "rms_norm_eps": self.norm_eps,
            "tie_word_embeddings": self.tie_embeddings,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "attention_dropout": self.dropout,
            "initializer_range": self.init_std,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "dtype": "float32",
            "use_cache": True,
        }

    @classmethod
    def from_llama_dict(cls, cfg: dict) -> "TransformerLMConfig":
        """Read a Llama `config.json`; refuse architectures this model cannot represent."""
        if cfg.get("model_type") != "llama":
            raise ValueError(f"expected a Llama config.json, got model_type={cfg.get('model_type')!r}")
        # transformers 5 writes `rope_parameters` ({"rope_type", "rope_theta", ...}); 4.x wrote rope_theta + rope_scaling
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        rope_theta = rope.pop("rope_theta", cfg.get("rope_theta", 10000.0))
        if rope not in ({}, {"rope_type": "default"}):
            raise ValueError(f"rope scaling {rope!r} is not supported")
        if cfg.get("attention_bias") or cfg.get("mlp_bias") or cfg.get("hidden_act", "silu") != "silu":
            raise ValueError("only bias-free SwiGLU (silu) Llama configs are supported")
        n_heads = cfg["num_attention_heads"]
        if cfg.get("head_dim") not in (None, cfg["hidden_size"] // n_heads):
            raise ValueError("head_dim must equal hidden_size / num_attention_heads")
        return cls(
            vocab_size=cfg["vocab_size"],
            d_model=cfg["hidden_size"],
            n_layers=cfg["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=cfg.get("num_key_value_heads"),
            d_ff=cfg["intermediate_size"],
            max_seq_len=cfg.get("max_position_embeddings", 1024),
            rope_theta=rope_theta,
            norm_eps=cfg.get("rms_norm_eps", 1e-6),
            tie_embeddings=cfg.get("tie_word_embeddings", False),
            dropout=cfg.get("attention_dropout", 0.0),
            init_std=cfg.get("initializer_range", 0.02),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_id=cfg.get("eos_token_id"),
            pad_token_id=cfg.get("pad_token_id"),
        )


class RMSNorm(nn.Module):
    """Root-mean-square norm: rescale each vector to unit RMS, then by a learned gain (no mean, no bias).

    Cheaper than LayerNorm and as good in practice. Computed in float32 even under bf16 autocast, as Llama does,
    because the mean of squares loses too much precision in bf16.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for rotary position embeddings (RoPE), shape (..., T, D).

    RoPE encodes position by rotating each pair of query/key features by an angle proportional to the
    position, at a different frequency per pair. The dot product q·k then depends only on the *distance*
    between positions, so the model learns relative order without any learned position table. Pairs are
    (i, i + D/2) — the "rotate half" layout Llama uses — hence the frequencies are concatenated twice.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim))
    angles = positions.float()[..., None] * inv_freq  # (..., T, D/2)
    angles = torch.cat((angles, angles), dim=-1)  # (..., T, D)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate feature pairs (x1, x2) of x (B, H, T, D) by the angles in cos/sin (B or 1, 1, T, D)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated_half = torch.cat((-x2, x1), dim=-1)
    return (x * cos + rotated_half * sin).to(x.dtype)


class Attention(nn.Module):
    """Causal multi-head self-attention with rotary positions.

    Each token projects to a query, key and value per head; a token attends to itself and to earlier tokens
    only (the causal mask), weighting their values by softmax(q·k / sqrt(D)). Heads look for different
    relations in parallel; `o_proj` mixes their outputs back into the residual stream. PyTorch's
    `scaled_dot_product_attention` picks a fused kernel (flash / memory-efficient) where one applies.
    """

    def __init__(self, cfg: TransformerLMConfig):
        super().__init__()
        self.n_heads, self.kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.dropout = cfg.dropout
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if self.kv_heads != self.n_heads:  # grouped-query attention: each K/V head serves several query heads
            k = k.repeat_interleave(self.n_heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.n_heads // self.kv_heads, dim=1)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, dropout_p=self.dropout if self.training else 0.0
        )
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    """SwiGLU feed-forward block: down(silu(gate(x)) * up(x)).

    Applied to each position independently, it is where most of the model's "knowledge" is stored. The
    gate branch decides, per feature, how much of the up-projection passes — a smoother, more expressive
    alternative to a plain GELU MLP at the same parameter count.
    """

    def __init__(self, cfg: TransformerLMConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """One pre-norm Transformer block: x + attention(norm(x)), then x + feed_forward(norm(x)).

    Normalising *before* each sub-layer and adding back onto an untouched residual stream keeps gradients
    well-scaled through depth, so no learning-rate warm-up tricks are needed at this size.
    """

    def __init__(self, cfg: TransformerLMConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = FeedForward(cfg)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    """Token embeddings → N decoder layers → final norm. Named `model` inside `TransformerLM`, as in Llama.

    The embedding table maps each token id to a d_model vector; there is no position table, since position
    enters through RoPE inside attention.
    """

    def __init__(self, cfg: TransformerLMConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)


class TransformerLM(nn.Module):
    """The causal language model: the backbone plus a projection (`lm_head`) from d_model to vocabulary logits."""

    # The unit FSDP shards and device maps keep whole (transformers' convention; accelerate's FSDP auto-wrap reads it).
    _no_split_modules = ["DecoderLayer"]

    def __init__(self, cfg: TransformerLMConfig):
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        # GPT-2's trick: shrink the init of the projections that write into the residual stream, so its
        # variance does not grow with depth.
        for name, param in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(param, mean=0.0, std=cfg.init_std / math.sqrt(2 * cfg.n_layers))
        self.tie_weights()

    # transformers' names for the embeddings and their tying, which accelerate's FSDP2 preparation calls: it moves
    # the model to the meta device (a copy per module, so the tie breaks) and ties again; without them lm_head
    # would train apart from the embedding it should share, and the optimizer would step only one of the two.
    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def tie_weights(self) -> None:
        if self.config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)

    def num_parameters(self) -> int:
        """Distinct parameters (a tied embedding counts once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_logits: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Logits (B, T, vocab) for every position; with `labels`, also the mean next-token cross-entropy.

        `labels` are the inputs themselves (shifted here), with -100 where no loss is wanted. A training step
        that needs only the loss passes `return_logits=False`: the output projection and the loss then run
        fused, chunk by chunk (`linear_cross_entropy`), without the (B, T, vocab) logits tensor.
        `attention_mask` (B, T; 1 = token, 0 = padding) lets a right- or left-padded batch run together;
        positions then count real tokens only, so a left-padded prompt sees the same RoPE angles as alone.
        """
        B, T = input_ids.shape
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len {self.config.max_seq_len}")
        mask = None
        if attention_mask is None:
            positions = torch.arange(T, device=input_ids.device)[None]  # (1, T)
        else:
            keep = attention_mask.bool()
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
            causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()
            mask = (causal[None] & keep[:, None, :])[:, None]  # (B, 1, T, T)
            mask = mask | torch.eye(T, dtype=torch.bool, device=input_ids.device)  # padded rows attend to themselves
        cos, sin = rotary_cos_sin(positions, self.config.head_dim, self.config.rope_theta)
        cos, sin = cos[:, None], sin[:, None]  # broadcast over heads
        x = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask)
        hidden = self.model.norm(x)
        if labels is not None and not return_logits and torch.is_grad_enabled():
            targets = labels[:, 1:].reshape(-1)
            return {"loss": linear_cross_entropy(hidden[:, :-1].reshape(-1, hidden.size(-1)), self.lm_head.weight, targets)}
        logits = self.lm_head(hidden)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)).float(), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return out

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = 50,
        eos_token_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample a continuation token by token (top-k; temperature 0 means greedy). Stops early at `eos_token_id`.

        Kept deliberately simple — the whole window is re-run each step, no KV cache. Fast inference goes
        through the ONNX exports (pocketlm.inference); this is for quick looks during training.
        """
        for _ in range(max_new_tokens):
            window = input_ids[:, -self.config.max_seq_len :]
            logits = self(window)["logits"][:, -1, :].float()
            if temperature == 0:
                next_id = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                next_id = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            input_ids = torch.cat((input_ids, next_id), dim=1)
            if eos_token_id is not None and bool((next_id == eos_token_id).all()):
                break
        return input_ids

    def save_pretrained(self, folder: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Write `config.json` (a Llama config) and `model.safetensors`, each via a temp file + rename.

        `state_dict` replaces the module's own, as in transformers: under FSDP the full weights gathered from the
        shards (the module itself then holds only this process's shard)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in (self.state_dict() if state_dict is None else state_dict).items()}
        if self.config.tie_embeddings:
            state.pop("lm_head.weight", None)  # transformers re-ties it from embed_tokens on load
        atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        write_json(folder / CONFIG_NAME, self.config.to_llama_dict())

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "TransformerLM":
        """Load a folder written by `save_pretrained` — or any bias-free Llama checkpoint in safetensors."""
        folder = Path(folder)
        cfg = TransformerLMConfig.from_llama_dict(json.loads((folder / CONFIG_NAME).read_text()))
        model = cls(cfg)
        state = load_file(folder / WEIGHTS_NAME)
        if cfg.tie_embeddings:
            state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
        model.load_state_dict(state, strict=True)
        return model

