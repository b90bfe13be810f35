"""The one `torch.onnx` export both ONNX exports use (`qa_onnx_export`, `lm_export`): trace, then check the graph
against PyTorch on several shapes before anything else is written.

Why by hand: optimum-onnx did this, but its latest release (0.1.0) requires transformers < 4.58 and its exporter
does not import under transformers 5 (`get_parameter_dtype` was removed from `transformers.modeling_utils`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

EXPORT_ATOL = 1e-4
"""Largest difference from PyTorch an export may show on its check inputs (the parity tests hold the same bound)."""
OPSET = 17


class ExportMismatchError(RuntimeError):
    """The exported graph does not compute what the PyTorch model computes."""


def export_with_torch(module, inputs: Mapping, path: Path, output_names: Sequence[str], dynamic_axes: Mapping,
                      checks: Sequence[Mapping] = ()) -> Path:
    """Trace `module` on `inputs` (a name → tensor mapping, in the order of `module.forward`'s arguments) into the
    ONNX graph `path`, then compare it with `module` on `inputs` and on each of `checks` (other shapes: what the
    dynamic axes must cover). Raises `ExportMismatchError` past `EXPORT_ATOL`.

    The TorchScript exporter (`dynamo=False`), not `torch.export`: its graph is the one ONNX Runtime's transformer
    fusions recognise (one `Attention` per BERT layer, `fuse_encoder`), the one optimum exported.
    """
    import warnings

    import torch

    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape-dependent Python branches: checked below
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*advanced indexing.*")  # a negative index would fail the check below
        torch.onnx.export(module, tuple(inputs.values()), str(path), input_names=list(inputs), output_names=list(output_names),
                          dynamic_axes=dict(dynamic_axes), opset_version=OPSET, dynamo=False)
    return check_against_torch(module, path, output_names, [inputs, *checks])


def check_against_torch(module, path: Path, output_names: Sequence[str], feeds: Sequence[Mapping]) -> Path:
    """Run the graph `path` and `module` on each of `feeds` (name → tensor mappings); raise `ExportMismatchError`
    where an output differs in shape or by more than `EXPORT_ATOL`."""
    import numpy as np
    import onnxruntime as ort
    import torch

    module.eval()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for feed in feeds:
        with torch.no_grad():
            expected = [t.numpy() for t in module(*feed.values())]
        got = session.run(list(output_names), {name: tensor.numpy() for name, tensor in feed.items()})
        for name, e, g in zip(output_names, expected, got):
            if e.shape != g.shape or np.abs(e - g).max() > EXPORT_ATOL:
                diff = np.abs(e - g).max() if e.shape == g.shape else f"shape {g.shape} against {e.shape}"
                raise ExportMismatchError(f"{path.name}: output {name} differs from PyTorch ({diff}) on inputs of shape "
                                          f"{tuple(next(iter(feed.values())).shape)}")
    return path
