"""Models: the readable Transformer LM (Llama-compatible); fine-tuning modules live beside it."""
