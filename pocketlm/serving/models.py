"""The models the REST API serves: ONNX exports resolved by Hub id, loaded once, before the first request.

Only onnxruntime, `tokenizers` and numpy are imported here — never torch or transformers: those
two imports alone take longer than the server's whole start-up budget (docs/design.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pocketlm import MINILM_SQUAD_ONNX, TINY_LM_ONNX
from pocketlm.hub import resolve
from pocketlm.inference.onnx_lm import LM_PRECISIONS, OnnxCausalLM, SamplingParams
from pocketlm.inference.qa_engine import OnnxQuestionAnswerer

Precision = Literal[LM_PRECISIONS]
"""A served graph's precision: the LM has all three, QA fp32 and int8."""


@dataclass
class ServedModel:
    id: str
    precision: Precision
    runtime: Any
    """`OnnxCausalLM` for `lm`, `OnnxQuestionAnswerer` for `qa`."""
    file: Path

    def describe(self) -> dict[str, str]:
        return {"id": self.id, "file": self.file.name, "precision": self.precision}

    @property
    def label(self) -> str:
        return f"{self.id} ({self.file.name}, {self.precision})"


@dataclass
class ServingModels:
    lm: ServedModel | None = None
    qa: ServedModel | None = None

    def describe(self) -> dict[str, dict[str, str]]:
        return {name: model.describe() for name, model in (("lm", self.lm), ("qa", self.qa)) if model is not None}


def load_lm(repo_id: str = TINY_LM_ONNX, precision: Precision = "fp32", threads: int | None = None,
            spinning: bool = False) -> ServedModel:
    """The LM's ONNX session for serving: its threads sleep between operators (`spinning`: see
    `pocketlm.inference.onnx_lm.session_options`)."""
    lm = OnnxCausalLM(resolve(repo_id), precision=precision, intra_op_num_threads=threads, spinning=spinning)
    lm.generate_ids([lm.encode("Warm up")], SamplingParams(max_new_tokens=2))  # first-call allocations, not at request time
    return ServedModel(repo_id, precision, lm, lm.onnx_path)


def load_qa(repo_id: str = MINILM_SQUAD_ONNX, precision: Precision = "int8", threads: int | None = None,
            spinning: bool = False) -> ServedModel:
    qa = OnnxQuestionAnswerer.from_pretrained(resolve(repo_id), quantized=precision == "int8", threads=threads,
                                              spinning=spinning)
    qa.answer("Who?", "Warm up.")
    return ServedModel(repo_id, precision, qa, qa.model_path)


def load_models(
    lm: str | None = TINY_LM_ONNX,
    qa: str | None = MINILM_SQUAD_ONNX,
    *,
    lm_precision: Precision = "fp32",
    qa_precision: Precision = "int8",
    threads: int | None = None,
) -> ServingModels:
    """Resolve and load both exports (None skips one), one after the other.

    Not side by side: the server calls this in a thread while its web stack imports, and on two cores two
    loaders (session creation and the warm-up calls are native code on their own threads) took both cores from
    those imports, the start's critical path. One after the other, the loads still end before the imports do."""
    return ServingModels(lm=load_lm(lm, lm_precision, threads) if lm else None,
                         qa=load_qa(qa, qa_precision, threads) if qa else None)
