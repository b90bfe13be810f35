"""A bottleneck adapter on the query side of a frozen sentence encoder, trained contrastively.

Why the query side only: the passages are embedded once, when the index is built; an adapter on the query
vector changes nothing in the index, costs one 384→32→384 step per question, and can be retrained or
switched off without re-embedding thousands of passages. Why a residual bottleneck that starts at zero:
at step 0 the retriever is exactly the stock encoder, and 25k parameters can only nudge the query towards
where SQuAD-style answers sit in the passage space — too few to forget what MiniLM knows.

Training needs no gradient through the encoder: question and passage embeddings are computed once (frozen
MiniLM) and only the adapter is trained, with an InfoNCE loss whose negatives are *every* training passage
(a few thousand: a full softmax is one small matrix product), which includes the hardest ones — the other
paragraphs of the same article.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from pocketlm.io import atomic_write, write_json

SELECT_BY = "eval_mrr@10"
WEIGHTS_NAME = "query_adapter.safetensors"
CONFIG_NAME = "query_adapter.json"


class QueryAdapter(nn.Module):
    """`q ↦ normalize(q + up(gelu(down(q))))`; `up` starts at zero, so the adapter starts as the identity."""

    def __init__(self, dim: int = 384, bottleneck: int = 32):
        super().__init__()
        self.dim, self.bottleneck = dim, bottleneck
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        return F.normalize(queries + self.up(F.gelu(self.down(queries))), dim=-1)

    @torch.no_grad()
    def transform(self, queries: np.ndarray) -> np.ndarray:
        """Adapt unit-length float32 query vectors (numpy in, numpy out) for a FAISS search."""
        self.eval()
        return self(torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))).numpy()

    def embed(self, encoder, texts: list[str]) -> np.ndarray:
        """Encode `texts` with the frozen `encoder`, then adapt: the query path of the retriever."""
        from pocketlm.rag.embeddings import encode

        return self.transform(encode(encoder, texts))

    def save(self, folder: str | Path, **extra) -> None:
        """Write the config (what it was trained from, for people), then the weights: the weights file is the
        completion marker (`exists`), and it alone defines the adapter (`load` reads the sizes from its
        tensors), so a kill between the two writes leaves the previous adapter whole."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / CONFIG_NAME, {"dim": self.dim, "bottleneck": self.bottleneck, **extra})
        tensors = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp))

    @classmethod
    def load(cls, folder: str | Path) -> QueryAdapter:
        tensors = load_file(Path(folder) / WEIGHTS_NAME)
        bottleneck, dim = tensors["down.weight"].shape
        adapter = cls(dim, bottleneck)
        adapter.load_state_dict(tensors)
        return adapter.eval()

    @staticmethod
    def exists(folder: str | Path) -> bool:
        return (Path(folder) / WEIGHTS_NAME).is_file()


@dataclass
class AdapterTrainingConfig:
    bottleneck: int = 32
    epochs: int = 10
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    temperature: float = 0.05
    """Softmax temperature of the InfoNCE loss (MiniLM's cosines of related texts sit within ~0.3 of each other)."""
    seed: int = 0


def retrieval_recall(
    queries: np.ndarray, passages: np.ndarray, positives: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, float]:
    """Exact recall@k and MRR@max(k) of unit vectors (cosine), computed in torch: a small full matrix product."""
    scores = torch.from_numpy(queries) @ torch.from_numpy(passages).T
    top = scores.topk(max(ks), dim=1).indices.numpy()
    hits = top == positives[:, None]
    ranks = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, np.inf)
    return {**{f"recall@{k}": float(hits[:, :k].any(axis=1).mean()) for k in ks}, f"mrr@{max(ks)}": float(np.mean(1 / ranks))}


def train_query_adapter(
    train_queries: np.ndarray,
    train_positives: np.ndarray,
    passages: np.ndarray,
    config: AdapterTrainingConfig,
    eval_queries: np.ndarray | None = None,
    eval_positives: np.ndarray | None = None,
    processes=None,
) -> tuple[QueryAdapter, list[dict]]:
    """Train an adapter on frozen embeddings; keep the epoch with the best held-out MRR@10.

    MRR@10 rather than recall@1 picks the epoch: it rewards moving gold passages to rank 1 but also charges
    for pushing others out of the top 10, and the aim is a better @1 with no loss at @5 and @10.

    `passages` is every candidate passage (rows); `*_positives` the row of each query's gold passage.
    Returns the adapter and the history (one record per epoch: loss, held-out recall@1/5/10).

    `processes` (accelerate's `PartialState` of an `accelerate launch`; None: one process) makes the processes
    split every batch (data parallel, torch's DDP): each draws the same order from the same seed, takes every
    `world`-th query of the batch, and the averaged gradients are those of the whole batch, so 2 processes
    follow one process's trajectory. Each evaluates the held-out queries itself.
    """
    rank, world = (processes.process_index, processes.num_processes) if processes is not None else (0, 1)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    adapter = QueryAdapter(passages.shape[1], config.bottleneck)
    model, group = adapter, None
    if world > 1:
        import torch.distributed as dist

        # The adapter trains on the CPU (its inputs are cached numpy embeddings) whatever devices the launch has:
        # on GPUs its group is NCCL, which carries no CPU tensors, so the gradients go through a gloo group.
        group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
        model = nn.parallel.DistributedDataParallel(adapter, process_group=group)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    q = torch.from_numpy(np.ascontiguousarray(train_queries, dtype=np.float32))
    pos = torch.from_numpy(np.asarray(train_positives, dtype=np.int64))
    p = torch.from_numpy(np.ascontiguousarray(passages, dtype=np.float32))
    steps_per_epoch = math.ceil(len(q) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=config.epochs * steps_per_epoch, pct_start=0.1
    )
    has_eval = eval_queries is not None and eval_positives is not None

    def evaluate() -> dict[str, float]:
        return retrieval_recall(adapter.transform(eval_queries), passages, np.asarray(eval_positives)) if has_eval else {}

    history = [{"step": 0, **{f"eval_{k}": v for k, v in evaluate().items()}}]
    best_state, best_score = _state(adapter), history[0].get(SELECT_BY, -1.0)
    for epoch in range(1, config.epochs + 1):
        adapter.train()
        order = torch.randperm(len(q), generator=generator)
        total = 0.0
        for start in range(0, len(q), config.batch_size):
            batch = order[start : start + config.batch_size]
            mine = batch[rank::world]  # this process's share (all of it in one process)
            logits = model(q[mine]) @ p.T / config.temperature
            summed = F.cross_entropy(logits, pos[mine], reduction="sum")
            # DDP averages the processes' gradients: scaled by world / batch, that average is the gradient of
            # the whole batch's mean loss (the shares may differ by one query)
            loss = summed * world / len(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(summed.detach())
        if world > 1:
            summed_over_processes = torch.tensor(total, dtype=torch.float64)
            dist.all_reduce(summed_over_processes, group=group)
            total = float(summed_over_processes)
        record = {"step": epoch, "loss": total / len(q), **{f"eval_{k}": v for k, v in evaluate().items()}}
        history.append(record)
        if not has_eval or record[SELECT_BY] > best_score:
            best_state, best_score = _state(adapter), record.get(SELECT_BY, best_score)
    adapter.load_state_dict(best_state)
    return adapter.eval(), history


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
