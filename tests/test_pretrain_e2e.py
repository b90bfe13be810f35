"""Done-when: the real scripts, chained as a user runs them, end with `pocketlm/tiny-lm` loadable anywhere.

prepare_corpus.py → `accelerate launch` pretrain.py (smoke preset) → generation_report.py → a fresh Python
process that resolves `pocketlm/tiny-lm` through `pocketlm.hub.resolve`, loads it with
`AutoModelForCausalLM` and generates. Runs in its own hub folder, so the shared test fixture's
`pocketlm/tiny-lm` is left alone.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pocketlm.data import corpus_folder

REPO = Path(__file__).resolve().parents[1]

LOAD_AND_GENERATE = """
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from pocketlm.hub import resolve
path = resolve("pocketlm/tiny-lm")
tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path)
torch.manual_seed(0)
ids = tokenizer("The city is", return_tensors="pt").input_ids
out = model.generate(ids, do_sample=True, top_k=50, max_new_tokens=12, pad_token_id=tokenizer.pad_token_id)
print(path)
print(type(model).__name__, out.shape[1] - ids.shape[1])
print(repr(tokenizer.decode(out[0])))
"""


def _run(args, env, timeout=300):
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, args))}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result.stdout


@pytest.mark.slow
def test_prepare_pretrain_report_publish_then_load_in_a_fresh_process(tmp_path):
    texts = tmp_path / "texts"
    texts.mkdir()
    for path in sorted(corpus_folder().glob("*.txt"))[:12]:  # a small subset of the default corpus
        shutil.copy(path, texts / path.name)
    env = {**os.environ, "PYTHONPATH": str(REPO), "POCKETLM_HUB_DIR": str(tmp_path / "hub"),
           "POCKETLM_RUNS_DIR": str(tmp_path / "runs")}
    corpus = tmp_path / "runs" / "corpus"

    out = _run([sys.executable, "training_scripts/prepare_corpus.py", "--corpus_dir", str(texts), "--vocab_size", "320",
                "--chunk_length", "64", "--validation_ratio", "0.1"], env)
    assert "coverage" in out and (corpus / "tokenizer" / "tokenizer.json").is_file()

    out = _run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate_configs/cpu.yaml",
                "training_scripts/pretrain.py", "--preset", "smoke"], env)
    assert "published pocketlm/tiny-lm" in out
    published = tmp_path / "hub" / "pocketlm" / "tiny-lm"
    card = (published / "README.md").read_text()
    metrics = json.loads((published / "metrics.json").read_text())
    best = json.loads((published / "best_checkpoint.json").read_text())
    assert metrics["perplexity"] == pytest.approx(best["eval_ppl"]) and "model-index" in card
    assert f"value: {round(metrics['perplexity'], 4)}" in card
    assert {"curves.png", "training_metrics.csv", "model.safetensors", "tokenizer.json"} <= {p.name for p in published.iterdir()}

    out = _run([sys.executable, "training_scripts/generation_report.py", "--min_new_tokens", "5", "--max_new_tokens", "10",
                "--temperatures", "0.7,1.3", "--top_ks", "50"], env)
    report = json.loads((tmp_path / "runs" / "generation_report" / "report.json").read_text())
    assert len(report["paragraphs"]) == 5 and all(5 <= p["new_tokens"] <= 10 for p in report["paragraphs"])
    assert len(report["sweep"]) == 2 and report["human"]["ppl"] > 1
    assert "## Coherence against diversity" in (tmp_path / "runs" / "generation_report" / "report.md").read_text()

    out = _run([sys.executable, "-c", LOAD_AND_GENERATE], env).splitlines()
    assert out[0] == str(published)
    assert out[1] == "LlamaForCausalLM 12"
    assert out[2].startswith("'The city is") and len(out[2]) > len("'The city is'")
