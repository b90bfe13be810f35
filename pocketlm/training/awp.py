"""Adversarial weight perturbation (Wu, Xia & Wang, NeurIPS 2020), one ascent step per training step.

No library in the stack ships it. After the clean backward pass, every trainable weight matrix W with a
gradient g moves up the loss by

    δ = ε · ‖W‖ · g / ‖g‖        (so ‖δ‖ = ε‖W‖: the perturbation is scaled to each weight's norm)

the loss on the same batch is computed and back-propagated at W + δ (its gradient adds to the clean one),
and W is then restored bit for bit from a copy — never by subtracting δ, which would leave rounding error.
Biases and norms (1-d parameters) are not perturbed, as in the paper's layer-wise formulation. A weight
without a gradient (or with a zero / non-finite one, e.g. an fp16 overflow step) is left untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from pocketlm.errors import ConfigError


class AWP:
    """Perturb a model's trainable weight matrices along their gradients, then restore them exactly."""

    def __init__(self, model: nn.Module, eps: float = 0.01):
        if not eps > 0:
            raise ConfigError(f"AWP epsilon must be positive, got {eps} (--awp_eps; 0 turns AWP off)")
        self.eps = eps
        self.params = [(name, p) for name, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
        self._backup: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def perturb(self) -> int:
        """Move each weight with a usable gradient by δ; returns how many weights moved."""
        if self._backup:
            raise RuntimeError("AWP.perturb called twice without restore")
        for name, param in self.params:
            if param.grad is None:
                continue
            grad_norm = torch.linalg.vector_norm(param.grad.float())
            weight_norm = torch.linalg.vector_norm(param.float())
            if not torch.isfinite(grad_norm) or grad_norm == 0 or weight_norm == 0:
                continue
            self._backup[name] = param.detach().clone()
            param.add_((self.eps * weight_norm / grad_norm * param.grad.float()).to(param.dtype))
        return len(self._backup)

    @torch.no_grad()
    def restore(self) -> None:
        """Put back the exact weights saved by `perturb`."""
        for name, param in self.params:
            if name in self._backup:
                param.copy_(self._backup[name])
        self._backup.clear()

    @contextmanager
    def perturbed(self) -> Iterator[int]:
        """`with awp.perturbed() as moved:` the weights are perturbed inside, restored on exit (even on error)."""
        try:
            yield self.perturb()
        finally:
            self.restore()
