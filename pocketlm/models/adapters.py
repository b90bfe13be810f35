"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021) in every feed-forward block of an encoder.

Why a module of our own rather than the `adapters` library (pinned in the stack): the classifier also uses
peft's LoRA, and the two libraries each own freezing and saving. Measured here (adapters 1.3.0, peft 0.21.2):
after `adapters.init` + `add_adapter(SeqBnConfig)` + `train_adapter`, `get_peft_model` re-freezes the
bottleneck weights (111,362 trainable = LoRA + head only) and `save_pretrained` writes none of them, while
`adapters.init` has already swapped the attention projections for its own LoRA layers. A 20-line module
attached to the FFN output projection composes with peft instead: peft's `modules_to_save` makes the
adapters trainable, saves them in the same `adapter_model.safetensors` as LoRA and the head, reloads them
with `PeftModel.from_pretrained`, and `merge_and_unload` folds LoRA into the base while the adapters stay.

Placement: the adapter reads the output of the FFN's second projection, before dropout, the residual and
the LayerNorm — Houlsby's position — as `h + up(gelu(down(h)))`. It is a child module of that projection
and runs from a forward hook, so the base model's state-dict keys do not change and a LoRA wrap of the
projection (peft keeps the original module as `base_layer`) still calls it.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from pocketlm.errors import ConfigError

ADAPTER_MODULE_NAME = "bottleneck_adapter"
"""Attribute name of the adapter under its FFN projection; distinctive so peft's `modules_to_save` suffix match hits only it."""

class BottleneckAdapter(nn.Module):
    """`h + up(act(down(h)))` with `up` initialised to zero, so a fresh adapter is exactly the identity."""

    def __init__(self, hidden_size: int, bottleneck_size: int):
        super().__init__()
        if bottleneck_size < 1:
            raise ConfigError(f"--adapter_size must be at least 1, got {bottleneck_size}")
        self.down = nn.Linear(hidden_size, bottleneck_size)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck_size, hidden_size)
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.act(self.down(hidden)))


def _run_adapter(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
    # Looked up at call time: peft replaces the attribute by its ModulesToSaveWrapper after the hook is registered.
    return getattr(module, ADAPTER_MODULE_NAME)(output)


def add_bottleneck_adapters(model: nn.Module, bottleneck_size: int, pattern: str) -> list[str]:
    """Attach a `BottleneckAdapter` after every linear layer whose name fully matches `pattern` (the FFN output
    projections; `pocketlm.models.peft_classifier.ARCHITECTURES` has them per model type). Returns the adapters' names."""
    regex = re.compile(pattern)
    targets = [(name, module) for name, module in model.named_modules() if regex.fullmatch(name) and isinstance(module, nn.Linear)]
    if not targets:
        raise ConfigError(f"--adapter_target_modules {regex.pattern!r} matches no linear layer of the model")
    names = []
    for name, linear in targets:
        adapter = BottleneckAdapter(linear.out_features, bottleneck_size).to(linear.weight.device)
        linear.add_module(ADAPTER_MODULE_NAME, adapter)
        linear.register_forward_hook(_run_adapter)
        names.append(f"{name}.{ADAPTER_MODULE_NAME}")
    return names


def adapter_parameter_count(hidden_size: int, bottleneck_size: int) -> int:
    """Parameters of one adapter: down (h×b + b) and up (b×h + h)."""
    return 2 * hidden_size * bottleneck_size + bottleneck_size + hidden_size
