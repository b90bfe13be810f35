"""The PyTorch backend of `QuestionAnswerer`: a transformers `AutoModelForQuestionAnswering` on CPU (or GPU)."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import torch

from pocketlm.hub import ArtifactNotFoundError, resolve
from pocketlm.inference.qa_engine import QuestionAnswerer, window_settings


class TorchQuestionAnswerer(QuestionAnswerer):
    def __init__(self, model, tokenizer, **kwargs):
        super().__init__(tokenizer, **kwargs)
        self.model = model.eval()
        # The signature, not `forward.__code__`: transformers 5 wraps `forward` in decorators (`inspect` unwraps them).
        forward_inputs = inspect.signature(model.forward).parameters
        self.input_names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in forward_inputs]

    @classmethod
    def from_pretrained(cls, model_id: str, **kwargs) -> "TorchQuestionAnswerer":
        """Load a QA checkpoint by repo id or path (through `pocketlm.hub.resolve`)."""
        from transformers import AutoModelForQuestionAnswering, AutoTokenizer

        path = resolve(model_id)
        if Path(path).is_dir() and not any(Path(path).glob("*.safetensors")) and any(Path(path).glob("*.onnx")):
            raise ArtifactNotFoundError(f"{model_id} is an ONNX export without PyTorch weights: run it with --onnx")
        for key, value in window_settings(path).items():
            kwargs.setdefault(key, value)
        model = AutoModelForQuestionAnswering.from_pretrained(path)
        return cls(model, AutoTokenizer.from_pretrained(path), **kwargs)

    @torch.inference_mode()
    def logits(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        device = self.model.device
        output = self.model(**{name: torch.from_numpy(array).to(device) for name, array in batch.items()})
        return output.start_logits.float().cpu().numpy(), output.end_logits.float().cpu().numpy()
