"""SmoothQuant-style smoothing of an encoder's feed-forward outputs, so that dynamic int8 keeps their accuracy.

The MatMul after each GELU reads activations with a few outlier channels (up to 16× the median channel's
range in the SQuAD MiniLM). Dynamic int8 picks one scale per tensor from its largest value, so those few
channels leave the rest only a handful of levels. Smoothing (Xiao et al., 2023) moves part of each channel's
range into the weights, which are quantised per output channel and have room to spare:

    X @ W  =  (X · diag(1/s)) @ (diag(s) · W),   s_j = max|X_j|^α / max|W_j|^(1-α)

`max|X_j|` comes from a calibration pass over a few hundred windows. The 1/s side becomes one `Mul` before each
MatMul (GELU is not linear, so it cannot be folded into the op before); the s side is folded into the weights.
Written here because neither optimum nor onnxruntime smooths for *dynamic* quantisation (onnxruntime offers
SmoothQuant only inside static quantisation, through Intel Neural Compressor).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

DEFAULT_ALPHA = 0.8
"""Share of the outlier range moved into the weights: the paper's 0.5 left F1 1.8 below fp32 on the SQuAD MiniLM,
0.8 left 0.55 (first 1,000 validation questions, batches of 16; docs/inference.md)."""


def activation_max(model, tensor_names: Sequence[str], batches: Iterable[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """Per-channel max |x| of each named tensor of `model` (an onnx ModelProto) over the real (unpadded) tokens."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in tensor_names:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    maxima: list[np.ndarray | None] = [None] * len(tensor_names)
    for batch in batches:
        real = batch["attention_mask"].astype(bool)
        for i, values in enumerate(session.run(list(tensor_names), batch)):
            channel_max = np.abs(values[real]).max(axis=0)
            maxima[i] = channel_max if maxima[i] is None else np.maximum(maxima[i], channel_max)
    if any(m is None for m in maxima):
        raise ValueError("no calibration batches")
    return maxima  # type: ignore[return-value]


def matmul_inputs(model, node_names: Sequence[str]) -> list[str]:
    """The activation input (the first) of each named MatMul of `model`."""
    nodes = {node.name: node for node in model.graph.node}
    return [nodes[name].input[0] for name in node_names]


def smooth_matmuls(model, node_names: Sequence[str], batches: Iterable[dict[str, np.ndarray]], alpha: float = DEFAULT_ALPHA) -> None:
    """Smooth the MatMuls `node_names` of `model` in place: scale their weight rows by s, their input by 1/s.

    Each MatMul must read its weight (in, out) from an initializer; its inputs' per-channel max |x| is measured
    on the calibration `batches` (the model's own inputs). The graph computes the same function in fp32."""
    from onnx import helper, numpy_helper

    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    maxima = activation_max(model, matmul_inputs(model, node_names), batches)
    nodes = {node.name: node for node in model.graph.node}
    initializers = {init.name: init for init in model.graph.initializer}
    for name, channel_max in zip(node_names, maxima):
        node = nodes[name]
        weight_init = initializers[node.input[1]]
        weight = numpy_helper.to_array(weight_init)
        scale = np.maximum(channel_max, 1e-5) ** alpha / np.maximum(np.abs(weight).max(axis=1), 1e-5) ** (1 - alpha)
        scale = (scale / np.exp(np.log(scale).mean())).astype(np.float32)  # geometric mean 1: keeps magnitudes familiar
        weight_init.CopyFrom(numpy_helper.from_array((weight * scale[:, None]).astype(weight.dtype), weight_init.name))
        inverse = numpy_helper.from_array(1.0 / scale, f"{name}/smooth_inverse_scale")
        model.graph.initializer.append(inverse)
        smoothed = f"{node.input[0]}/smoothed"
        position = list(model.graph.node).index(node)
        model.graph.node.insert(position, helper.make_node("Mul", [node.input[0], inverse.name], [smoothed], name=f"{name}/smooth"))
        node.input[0] = smoothed
