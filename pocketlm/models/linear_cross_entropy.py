"""The output projection and the cross-entropy in one pass, chunk by chunk, without the full logits tensor.

A training step of the tiny LM projects 4,096 positions onto 8,000 tokens: a 131 MB float32 logits tensor that
the loss then copies, log-softmaxes, and — in the backward — fills with zeros, scatters into and multiplies back.
On a 2-core CPU that memory traffic cost as much as a third of the output layer's time (`torch.profiler`:
`_log_softmax`, its backward, `fill_` and `copy_`). Here each chunk of positions gets its logits, its loss
and, at once, its gradients (softmax − one-hot is the gradient of the mean cross-entropy with respect to the
logits), so a chunk's logits are used while they are still in cache and never kept. The backward then only
scales the stored gradients.

The same idea as Liger Kernel's `FusedLinearCrossEntropy` and Apple's Cut Cross-Entropy, which are Triton
kernels for GPUs; PyTorch has no fused form, so this is written out with plain tensor ops, which run on any
device. Under autocast the two matmuls run in the autocast dtype and the softmax in float32, as
`F.cross_entropy(logits.float(), ...)` would.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


class LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `hidden @ weight.T` against `targets` (N), ignoring `IGNORE_INDEX` targets.

    Gradients are computed in the forward (that is what saves the memory), so call it only when a backward follows.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int) -> torch.Tensor:
        device_type = hidden.device.type
        matmul_weight = weight
        if torch.is_autocast_enabled(device_type):  # cast the (tied, 8000 × 256) weight once, not once per chunk
            matmul_weight = weight.to(torch.get_autocast_dtype(device_type))
        valid = targets != IGNORE_INDEX
        count = valid.sum().clamp(min=1)
        hidden_grad = torch.empty_like(hidden)
        weight_grad = torch.zeros_like(weight)
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            rows = hidden[start : start + chunk_size]
            chunk_targets = targets[start : start + chunk_size]
            chunk_valid = valid[start : start + chunk_size]
            logits = (rows @ matmul_weight.t()).float()
            safe_targets = chunk_targets.clamp(min=0)
            target_logits = logits.gather(1, safe_targets[:, None]).squeeze(1)
            # One exp per logit, in place, serving both the loss and the gradient: `logsumexp` and then a softmax
            # take two, and two more passes over the 16 MB chunk (twice this code's time outside the matmuls).
            row_max = logits.amax(dim=-1, keepdim=True)
            grad = logits.sub_(row_max).exp_()
            total = grad.sum(dim=-1, keepdim=True)
            log_norm = (row_max + total.log()).squeeze(1)
            loss_sum += ((log_norm - target_logits) * chunk_valid).sum()
            # d loss / d logits = (softmax − one-hot) / count on valid rows, 0 on ignored ones — built in place.
            row_share = chunk_valid / count
            grad.mul_(row_share[:, None] / total)
            grad[torch.arange(len(chunk_targets), device=grad.device), safe_targets] -= row_share
            grad = grad.to(matmul_weight.dtype)
            hidden_grad[start : start + chunk_size] = grad @ matmul_weight
            weight_grad += grad.t() @ rows.to(matmul_weight.dtype)
        ctx.save_for_backward(hidden_grad, weight_grad)
        return loss_sum / count

    @staticmethod
    def backward(ctx, loss_grad: torch.Tensor):
        hidden_grad, weight_grad = ctx.saved_tensors
        return hidden_grad * loss_grad, weight_grad * loss_grad, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk_size: int = 512) -> torch.Tensor:
    """`F.cross_entropy(hidden @ weight.T, targets, ignore_index=-100)` for training, chunk by chunk.

    `hidden` (N, C), `weight` (V, C), `targets` (N). 512 rows a chunk (a 16 MB float32 logits block at V = 8,000)
    was the fastest of 256–4,096 on the 2-core CPU.
    """
    return LinearCrossEntropy.apply(hidden, weight, targets, chunk_size)
