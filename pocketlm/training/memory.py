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


GPU_4GB_USABLE = int(3.5 * 1024**3)
"""What a 4 GB card leaves to PyTorch tensors: minus the CUDA context (~0.3–0.5 GB) and allocator slack."""


def batch_plan(fixed_bytes: int, activation_bytes_per_example: float, effective_batch: int = 32,
               budget_bytes: int = GPU_4GB_USABLE, headroom: float = 1.25) -> dict:
    """Per-device batch × accumulation steps for `effective_batch` within `budget_bytes`.

    `fixed_bytes` is what does not grow with the batch (weights, gradients, optimiser state, autocast's
    half-precision weight copies); activations grow linearly with the batch at a fixed length. `headroom`
    covers what the saved-tensor count misses (activation gradients alive during backward, allocator
    fragmentation). The per-device batch is the largest power of two that fits and divides
    `effective_batch`; the rest is gradient accumulation, which costs no memory.
    """
    fits = max(0, int((budget_bytes - fixed_bytes) // (activation_bytes_per_example * headroom)))
    per_device = 1
    while per_device * 2 <= min(fits, effective_batch) and effective_batch % (per_device * 2) == 0:
        per_device *= 2
    return {"largest_batch_that_fits": fits, "per_device_batch": per_device if fits else 0,
            "gradient_accumulation_steps": effective_batch // per_device if fits else None,
            "estimated_peak_mib": round((fixed_bytes + per_device * activation_bytes_per_example * headroom) / MiB)}
