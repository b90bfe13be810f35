"""Training memory, measured part by part: what a batch × accumulation choice for a small GPU rests on.

Peak training memory ≈ weights + gradients + optimiser state + the activations autograd keeps for the
backward pass. The first three follow from parameter counts (AdamW keeps two fp32 moments per trainable
parameter). The activations are measured, not guessed: `saved_activation_bytes` runs one forward pass
under `torch.autograd.graph.saved_tensors_hooks` and adds up the storage of every tensor saved for
backward (parameters excluded), so it is the same on CPU and GPU for the same dtype. bf16 autocast on CPU
stores what fp16 autocast stores on a GPU (2-byte activations, half-precision copies of the weights).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch
from torch import nn

MiB = 1024**2


@dataclass
class TrainingMemory:
    weights: int
    gradients: int
    optimizer_state: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer_state + self.activations

    def as_mib(self) -> dict[str, float]:
        return {key: round(value / MiB, 1) for key, value in {**asdict(self), "total": self.total}.items()}


def saved_activation_bytes(model: nn.Module, batch: dict, autocast_dtype: torch.dtype | None = None) -> int:
    """Bytes of the tensors autograd saves for backward in one training forward pass (parameters excluded)."""
    parameter_storage = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameter_storage:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    device = next(model.parameters()).device.type
    autocast = torch.autocast(device, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    was_training = model.training
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast:
        loss = model(**batch).loss
    del loss
    model.train(was_training)
    return sum(saved.values())


def training_memory(model: nn.Module, batch: dict, autocast_dtype: torch.dtype | None = None) -> TrainingMemory:
    """Weights, gradients and AdamW state from the parameters; activations measured on `batch`."""
    parameters = {id(p): p for p in model.parameters()}.values()
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    return TrainingMemory(
        weights=sum(p.numel() * p.element_size() for p in parameters),
        gradients=trainable * 4,
        optimizer_state=trainable * 8,
        activations=saved_activation_bytes(model, batch, autocast_dtype),
    )


def largest_batch(budget_bytes: int, fixed_bytes: int, activation_bytes_per_example: float) -> int:
    """The largest per-device batch whose activations fit beside the fixed memory (weights, grads, optimiser)."""
    return max(0, int((budget_bytes - fixed_bytes) // activation_bytes_per_example))
