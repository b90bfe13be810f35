"""Mixout (Lee, Cho & Kang, ICLR 2020): a Bernoulli mix of a layer's weights towards its pretrained weights.

Written here because neither transformers nor peft ships it. In training, each weight entry is replaced by
its target (the weights when fine-tuning began: pretrained for a pretrained layer, the initialisation for a
new one) with probability p, and the result is rescaled so its expectation is the current weight:

    W_mix = (M ⊙ W + (1 − M) ⊙ U − p·U) / (1 − p),   M ~ Bernoulli(1 − p) per entry

In eval mode the layer is the plain linear layer with its current weights. The target is a non-persistent
buffer, so a saved `MixLinear` has exactly the keys of an `nn.Linear` and reloads into one.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from pocketlm.errors import ConfigError


def check_mixout_probability(p: float) -> float:
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"mixout probability must be in [0, 1), got {p} (--mixout_p)")
    return float(p)


def mixout(weight: torch.Tensor, target: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """The mixed weight; the identity when not training or p == 0. Gradients flow to `weight` only."""
    if not training or p == 0.0:
        return weight
    keep = torch.empty_like(weight).bernoulli_(1.0 - p)
    return (keep * weight + (1.0 - keep) * target - p * target) / (1.0 - p)


class MixLinear(nn.Linear):
    """An `nn.Linear` whose weight is mixed out towards `target` during training (the bias is left as is)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, p: float = 0.1, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.p = check_mixout_probability(p)
        self.register_buffer("target", self.weight.detach().clone(), persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, p: float) -> "MixLinear":
        """A MixLinear with `linear`'s weights, mixing towards those same weights (taken now)."""
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, p=p,
                    device=linear.weight.device, dtype=linear.weight.dtype)
        layer.load_state_dict(linear.state_dict())
        layer.target.copy_(linear.weight.detach())
        layer.weight.requires_grad_(linear.weight.requires_grad)
        if linear.bias is not None:
            layer.bias.requires_grad_(linear.bias.requires_grad)
        return layer

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, mixout(self.weight, self.target, self.p, self.training), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p}"


def apply_mixout(model: nn.Module, p: float, module_names: list[str]) -> list[str]:
    """Replace the `nn.Linear` layers at or under the named modules by `MixLinear(p)`; return the replaced names.

    A name matches a module whose name equals it or ends with `.name` (e.g. `classifier`, `pooler`).
    With p == 0 nothing is replaced: the layers stay plain.
    """
    p = check_mixout_probability(p)
    if p == 0.0:
        return []
    suffix = re.compile(rf"(^|.*\.)({'|'.join(map(re.escape, module_names))})(\..*)?$")
    replaced = []
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear and suffix.match(name):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, MixLinear.from_linear(module, p))
            replaced.append(name)
    if not replaced:
        raise ConfigError(f"mixout targets {module_names} match no linear layer of the model")
    return replaced
