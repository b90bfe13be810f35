"""Inference: HF pipelines, ONNX export and quantisation, batching schemes, and the torch-free ONNX runtime path."""
