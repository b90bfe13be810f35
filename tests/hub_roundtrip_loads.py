"""Load each published artifact with the standard calls and print what it computes, as JSON (stdout, last line).

    python tests/hub_roundtrip_loads.py SOURCES_JSON

SOURCES_JSON maps artifact names (tiny-lm, tiny-lm-onnx, minilm-squad, minilm-squad-onnx, rag-index,
tiny-lm-rag-lora) to what the calls are given: a repo id (a fresh process downloads it from `HF_ENDPOINT`)
or the local folder the training script published (the reference). `tests/test_hub_roundtrip.py` runs it both
ways and compares the outputs; besides the standard calls, each artifact's model-card idiom runs as written.
"""

import contextlib
import io
import json
import os
import re
import sys

PROMPT = "The history of the city"
QUESTION, CONTEXT = "Which team won Super Bowl 50?", "The Denver Broncos defeated the Carolina Panthers 24-10 to win Super Bowl 50."


def card_idiom(source: str, repo_type: str = "model") -> str:
    """Run the README's "How to load" code block as written (a last bare expression is printed, as in a notebook)."""
    import torch

    if os.path.isdir(source):
        readme = open(os.path.join(source, "README.md"), encoding="utf-8").read()
    else:
        from huggingface_hub import hf_hub_download

        readme = open(hf_hub_download(source, "README.md", repo_type=repo_type), encoding="utf-8").read()
    code = re.search(r"## How to load\s+```python\n(.*?)```", readme, re.S).group(1)
    *body, last = code.rstrip().splitlines()
    if last and not last.startswith((" ", "#", "print(", "for ")) and "=" not in last.split("(")[0]:
        last = f"print(repr({last}))"
    torch.manual_seed(0)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec("\n".join([*body, last]), {"__name__": "__card__"})
    return out.getvalue()


def tiny_lm(source: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source)
    with torch.no_grad():
        ids = model.generate(**tokenizer(PROMPT, return_tensors="pt"), max_new_tokens=12, do_sample=False)
        logits = model(**tokenizer(PROMPT, return_tensors="pt")).logits[0, -1, :8]
    generator = pipeline("text-generation", model=source)
    text = generator(PROMPT, max_new_tokens=12, do_sample=False)[0]["generated_text"]
    return {"ids": ids[0].tolist(), "logits": logits.tolist(), "pipeline": text, "card": card_idiom(source)}


def tiny_lm_onnx(source: str) -> dict:
    from huggingface_hub import snapshot_download

    from pocketlm.inference.onnx_lm import OnnxCausalLM, SamplingParams

    folder = source if os.path.isdir(source) else snapshot_download(source)
    lm = OnnxCausalLM(folder)
    ids = lm.generate_ids([lm.encode(PROMPT)], SamplingParams(max_new_tokens=12))[0]
    return {"ids": list(map(int, ids)), "files": sorted(os.listdir(folder)), "card": card_idiom(source)}


def minilm_squad(source: str) -> dict:
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from pocketlm.inference.pipelines import answer_question

    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForQuestionAnswering.from_pretrained(source)
    with torch.no_grad():
        start = model(**tokenizer(QUESTION, CONTEXT, return_tensors="pt")).start_logits[0, :8]
    # transformers 5 has no question-answering pipeline: pocketlm's one-liner stands in for it
    answer = answer_question(context=CONTEXT, question=QUESTION, model=source)
    return {"start_logits": start.tolist(), "pipeline": answer, "card": card_idiom(source)}


def minilm_squad_onnx(source: str) -> dict:
    from huggingface_hub import snapshot_download

    from pocketlm.inference.qa_engine import OnnxQuestionAnswerer

    folder = source if os.path.isdir(source) else snapshot_download(source)
    fp32 = OnnxQuestionAnswerer.from_pretrained(folder).answer(QUESTION, CONTEXT)
    return {"fp32": [fp32.text, fp32.start], "files": sorted(os.listdir(folder)), "card": card_idiom(source)}


def rag_index(source: str) -> dict:
    from pocketlm.rag.retriever import RagRetriever

    retriever = RagRetriever.from_pretrained(source, index_type="flat")
    hits = retriever.retrieve(QUESTION, k=3)
    return {"hits": [[h.id, round(float(h.score), 6)] for h in hits], "card": card_idiom(source)}


def tiny_lm_rag_lora(source: str) -> dict:
    import torch
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pocketlm.rag.generator import generate_answers, load_generator

    base = PeftConfig.from_pretrained(source).base_model_name_or_path
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), source).merge_and_unload().eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    with torch.no_grad():
        logits = model(**tokenizer(PROMPT, return_tensors="pt")).logits[0, -1, :8]
    chain_model, chain_tokenizer, _ = load_generator(source)
    return {"base": base, "logits": logits.tolist(), "answers": generate_answers(chain_model, chain_tokenizer, [PROMPT]),
            "card": card_idiom(source)}


LOADERS = {"tiny-lm": tiny_lm, "tiny-lm-onnx": tiny_lm_onnx, "minilm-squad": minilm_squad,
           "minilm-squad-onnx": minilm_squad_onnx, "rag-index": rag_index, "tiny-lm-rag-lora": tiny_lm_rag_lora}

if __name__ == "__main__":
    sources = json.loads(sys.argv[1])
    results = {name: LOADERS[name](source) for name, source in sources.items()}
    print(json.dumps(results))
