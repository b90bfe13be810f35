"""One Llama decode step written in ONNX's own transformer operators: `RMSNormalization`, `RotaryEmbedding` and
`Attention` (opset 23), so a layer is 16 nodes and the whole 4-layer graph 81.

Why by hand: `torch.onnx` traces transformers' eager Llama into ~290 nodes after ONNX Runtime's optimisations
(shape arithmetic for every reshape, `rotate_half` as slices and concats, the mask built from a dozen ops), and on
a 2-core CPU a batch-8 decode step of the tiny LM spends more time stepping through them than in its matmuls.
Neither ONNX Runtime's transformer optimizer nor onnxscript's `ort_fusions` fuses anything on that export, and the
exporter that emits the opset-23 operators (`dynamo=True`) does not trace transformers' cache. The graph has the
inputs and outputs of the traced one (`lm_export._with_past_graph`), is checked against PyTorch the same way, and
quantises with the same onnxruntime tools; q/k/v and gate/up are packed into one matmul each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OPSET = 23


def supports(config) -> bool:
    """Whether `config` is a Llama this builder writes exactly: SwiGLU (silu), no biases, plain RoPE, fp32."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    return (
        getattr(config, "model_type", None) == "llama"
        and getattr(config, "hidden_act", None) == "silu"
        and not getattr(config, "attention_bias", False)
        and not getattr(config, "mlp_bias", False)
        and rope.get("rope_type", "default") == "default"
        and "rope_theta" in rope
        and getattr(config, "pretraining_tp", 1) == 1
    )


def build_llama_decoder(model, path: str | Path) -> Path:
    """Write `model` (a transformers `LlamaForCausalLM`, `supports(model.config)`) as one decode step to `path`:
    (`input_ids`, `attention_mask`, `position_ids`, `past_key_values.{i}.key/value`...) → (`logits` of the last
    position, `present.{i}.key/value`...), every axis but the model's own dynamic."""
    import onnx
    from onnx import TensorProto, helper

    config = model.config
    weights = {name: tensor.detach().float().numpy() for name, tensor in model.state_dict().items()}
    builder = _GraphBuilder()
    heads, hidden = config.num_attention_heads, config.hidden_size
    kv_heads = config.num_key_value_heads or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    eps = config.rms_norm_eps

    cos, sin = _rope_tables(model, config.max_position_embeddings)
    builder.constant("rope.cos", cos)
    builder.constant("rope.sin", sin)
    mask = _attention_bias(builder)
    x = builder.node("Gather", [builder.constant("model.embed_tokens.weight", weights["model.embed_tokens.weight"]), "input_ids"],
                     "embed_tokens")
    present_names = []
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}."

        def weight(name, _prefix=prefix):
            return weights[_prefix + name]

        def linear(h, name, *parts):
            """h @ Wᵀ for the concatenation of the `parts` weights (one matmul for q/k/v, one for gate/up)."""
            packed = np.concatenate([weight(part + ".weight") for part in parts], axis=0).T
            return builder.node("MatMul", [h, builder.constant(prefix + name + ".weight", packed)], prefix + name)

        h = builder.node("RMSNormalization", [x, builder.constant(prefix + "input_layernorm.weight",
                                                                  weight("input_layernorm.weight"))],
                         prefix + "input_layernorm", epsilon=eps, axis=-1)
        qkv = linear(h, "self_attn.qkv_proj", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
        sizes = builder.constant(prefix + "qkv_sizes", np.array([heads * head_dim, kv_heads * head_dim,
                                                                   kv_heads * head_dim], np.int64))
        q, k, v = builder.node("Split", [qkv, sizes], prefix + "self_attn.split", outputs=3, axis=-1)
        q = builder.node("RotaryEmbedding", [q, "rope.cos", "rope.sin", "position_ids"], prefix + "self_attn.rope_q",
                         num_heads=heads)
        k = builder.node("RotaryEmbedding", [k, "rope.cos", "rope.sin", "position_ids"], prefix + "self_attn.rope_k",
                         num_heads=kv_heads)
        presents = [f"present.{i}.key", f"present.{i}.value"]
        attended = builder.node("Attention", [q, k, v, mask, f"past_key_values.{i}.key", f"past_key_values.{i}.value"],
                                prefix + "self_attn.attention", output_names=[prefix + "self_attn.attention", *presents],
                                q_num_heads=heads, kv_num_heads=kv_heads)[0]
        present_names += presents
        x = builder.node("Add", [x, linear(attended, "self_attn.o_proj", "self_attn.o_proj")], prefix + "attn_residual")
        h = builder.node("RMSNormalization", [x, builder.constant(prefix + "post_attention_layernorm.weight",
                                                                  weight("post_attention_layernorm.weight"))],
                         prefix + "post_attention_layernorm", epsilon=eps, axis=-1)
        gate, up = builder.node("Split", [linear(h, "mlp.gate_up_proj", "mlp.gate_proj", "mlp.up_proj")],
                                prefix + "mlp.split", outputs=2, axis=-1, num_outputs=2)
        silu = builder.node("Mul", [gate, builder.node("Sigmoid", [gate], prefix + "mlp.sigmoid")], prefix + "mlp.silu")
        product = builder.node("Mul", [silu, up], prefix + "mlp.product")
        x = builder.node("Add", [x, linear(product, "mlp.down_proj", "mlp.down_proj")], prefix + "mlp_residual")

    # Logits for the last position only: generation reads nothing else (as `logits_to_keep=1` in the traced graph).
    last = builder.node("Gather", [x, builder.constant("last_index", np.array([-1], np.int64))], "last_position", axis=1)
    h = builder.node("RMSNormalization", [last, builder.constant("model.norm.weight", weights["model.norm.weight"])],
                     "model.norm", epsilon=eps, axis=-1)
    head = weights.get("lm_head.weight", weights["model.embed_tokens.weight"])  # tied: the embedding
    builder.node("MatMul", [h, builder.constant("lm_head.weight", np.ascontiguousarray(head.T))], "lm_head",
                 output_names=["logits"])

    def tensor(name, elem, *shape):
        return helper.make_tensor_value_info(name, elem, list(shape))

    inputs = [tensor("input_ids", TensorProto.INT64, "batch_size", "sequence_length"),
              tensor("attention_mask", TensorProto.INT64, "batch_size", "total_sequence_length"),
              tensor("position_ids", TensorProto.INT64, "batch_size", "sequence_length")]
    outputs = [tensor("logits", TensorProto.FLOAT, "batch_size", 1, config.vocab_size)]
    for name in present_names:
        inputs.append(tensor(name.replace("present", "past_key_values"), TensorProto.FLOAT, "batch_size", kv_heads,
                             "past_sequence_length", head_dim))
        outputs.append(tensor(name, TensorProto.FLOAT, "batch_size", kv_heads, "total_sequence_length", head_dim))
    graph = helper.make_graph(builder.nodes, "llama_decode_step", inputs, outputs, builder.initializers)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="pocketlm")
    onnx_model.ir_version = 10  # the first IR version with opset 23; onnxruntime reads it
    onnx.checker.check_model(onnx_model, full_check=True)
    onnx.save(onnx_model, str(path))
    return Path(path)


def _rope_tables(model, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of every position's angle for each of the head_dim / 2 frequencies, from the model's own rotary
    embedding (so the graph's angles are the ones PyTorch computes; its second half repeats the first)."""
    import torch

    with torch.no_grad():
        cos, sin = model.model.rotary_emb(torch.zeros(1), torch.arange(positions)[None])
    half = cos.shape[-1] // 2
    return cos[0, :, :half].numpy(), sin[0, :, :half].numpy()


def _attention_bias(builder: _GraphBuilder) -> str:
    """The additive mask (batch, 1, new, total) every layer shares: 0 where query i may see key j (the key is a
    real token, `attention_mask`, and j ≤ past + i), float32's minimum elsewhere — as transformers' eager mask, so
    a fully padded query row attends uniformly rather than to nothing (no NaN enters the cache)."""
    from onnx import TensorProto

    total = builder.node("Shape", ["attention_mask"], "mask.total", start=1, end=2)
    new = builder.node("Shape", ["input_ids"], "mask.new", start=1, end=2)
    scalar = builder.constant("mask.scalar_shape", np.array([], np.int64))
    total = builder.node("Reshape", [total, scalar], "mask.total_scalar")
    past = builder.node("Sub", [total, builder.node("Reshape", [new, scalar], "mask.new_scalar")], "mask.past")
    one = builder.constant("mask.one", np.array(1, np.int64))
    keys = builder.node("Range", [builder.constant("mask.zero", np.array(0, np.int64)), total, one], "mask.keys")
    queries = builder.node("Range", [past, total, one], "mask.queries")
    queries = builder.node("Unsqueeze", [queries, builder.constant("mask.axis_1", np.array([1], np.int64))],
                           "mask.query_column")
    causal = builder.node("LessOrEqual", [keys, queries], "mask.causal")  # (new, total)
    real = builder.node("Cast", ["attention_mask"], "mask.real", to=TensorProto.BOOL)
    real = builder.node("Unsqueeze", [real, builder.constant("mask.axes_1_2", np.array([1, 2], np.int64))],
                        "mask.real_keys")  # (batch, 1, 1, total)
    visible = builder.node("And", [real, causal], "mask.visible")
    return builder.node("Where", [visible, builder.constant("mask.open", np.array(0, np.float32)),
                                  builder.constant("mask.closed", np.array(np.finfo(np.float32).min, np.float32))],
                        "mask.bias")


class _GraphBuilder:
    """Collects nodes and initializers; each node's output is named after the node (or `output_names`)."""

    def __init__(self):
        self.nodes, self.initializers = [], []

    def constant(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, *, outputs: int = 1, output_names: list[str] | None = None,
             **attributes):
        from onnx import helper

        output_names = output_names or ([name] if outputs == 1 else [f"{name}.{i}" for i in range(outputs)])
        self.nodes.append(helper.make_node(op, inputs, output_names, name=name, **attributes))
        return output_names[0] if len(output_names) == 1 else output_names
