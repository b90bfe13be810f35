"""The LM's ONNX export with KV cache, the torch-free decode loop, and the two batching schemes."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pocketlm.hub import resolve
from pocketlm.inference.batching import corpus_prompts, full_batch, token_by_token
from pocketlm.inference.onnx_lm import OnnxCausalLM, SamplingParams
from pocketlm.settings import REPO_ROOT


@pytest.fixture(scope="module")
def lm(tiny_lm_onnx_repo) -> OnnxCausalLM:
    return OnnxCausalLM(resolve(tiny_lm_onnx_repo))


@pytest.fixture(scope="module")
def prompts(lm) -> list[list[int]]:
    """20 real WikiText-2 openings of 3 to 60 tokens: batches mix very different lengths."""
    return corpus_prompts(lm, 20, [3 + 3 * i for i in range(20)])


def test_export_is_published_with_kv_cache_and_checked_against_pytorch(tiny_lm_onnx_repo):
    folder = Path(resolve(tiny_lm_onnx_repo))
    assert {"model.onnx", "model_quantized.onnx", "tokenizer.json", "config.json", "README.md"} <= {p.name for p in folder.iterdir()}
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["max_abs_logit_diff_fp32"] <= 1e-4
    assert metrics["greedy_token_match_fp32"] == 1.0  # 32 greedy tokens per prompt equal transformers' generate
    assert "greedy_token_match_int8" in metrics  # the wide random fixture is too chaotic for int8; the real card reports it
    assert metrics["size_mb_int8"] < 0.5 * metrics["size_mb_fp32"]
    assert metrics["latency_ms_p50_fp32"] > 0
    card = (folder / "README.md").read_text()
    assert "model-index" in card and "OnnxCausalLM" in card


def test_the_static_int8_graph_is_batch_stable_and_keeps_the_sensitive_matmuls_in_fp32(tiny_lm_onnx_repo, prompts):
    """The export's static int8 graph: the card measures that batching changes none of its greedy tokens (the
    dynamic graph's scales depend on the batch), and so does this test, on prompts of 3–60 tokens in one batch;
    its weight matmuls are int8 except the MLP output projections and the output layer."""
    import onnx

    folder = Path(resolve(tiny_lm_onnx_repo))
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["batched_token_match_fp32"] == 1.0 and metrics["batched_token_match_int8_static"] == 1.0
    assert {"greedy_token_match_int8_static", "latency_ms_p50_int8_static", "size_mb_int8_static"} <= set(metrics)

    static = OnnxCausalLM(folder, precision="int8-static")
    greedy = SamplingParams(max_new_tokens=12, stop_at_eos=False)
    alone = [static.generate_ids([p], greedy)[0] for p in prompts]
    assert static.generate_ids(prompts, greedy) == alone
    assert len({t for out in alone for t in out}) > 20, "outputs too uniform to reveal a batching difference"

    graph = onnx.load(str(folder / "model_static_quantized.onnx")).graph
    dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    weight_matmuls = [node for node in graph.node if node.op_type == "MatMul"]  # attention is one `Attention` node
    int8 = {node.name for node in weight_matmuls if dequantized.intersection(node.input)}
    assert int8 and all("down_proj" not in name for name in int8)
    assert weight_matmuls[-1].name not in int8  # the output layer
    assert any("qkv_proj" in name for name in int8) and any("gate_up_proj" in name for name in int8)


def _greedy_from_pytorch(model, prompts, new_tokens):
    import torch

    with torch.no_grad():
        return [model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                               do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                               pad_token_id=0)[0, len(p):].tolist() for p in prompts]


def _wide_lm_folder(tmp_path, tiny_tokenizer, model):
    """`model` with its weights redrawn wide (std 0.2, so greedy continuations vary) saved beside the tokenizer."""
    import torch

    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.2)
    model.save_pretrained(tmp_path / "pt")
    tiny_tokenizer.save_pretrained(tmp_path / "pt")
    return tmp_path / "pt"


def test_a_llama_is_written_in_onnx_attention_operators_grouped_query_attention_included(tmp_path, tiny_tokenizer):
    """A Llama with 4 query and 2 key/value heads: its graph is ONNX's `RMSNormalization`, `RotaryEmbedding` and
    `Attention` (16 nodes a layer, no reshape arithmetic), the export's own check against PyTorch passes, and its
    greedy tokens equal transformers' `generate`, alone and in one left-padded batch of mixed lengths."""
    import collections

    import onnx
    from transformers import AutoModelForCausalLM

    from pocketlm.inference.lm_export import export_causal_lm
    from pocketlm.models.transformer_lm import TransformerLM, TransformerLMConfig

    config = TransformerLMConfig(vocab_size=len(tiny_tokenizer), d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96,
                                 max_seq_len=128)
    folder = _wide_lm_folder(tmp_path, tiny_tokenizer, TransformerLM(config))
    export_causal_lm(str(folder), tmp_path / "onnx", quantize=False)

    graph = onnx.load(str(tmp_path / "onnx" / "model.onnx")).graph
    ops = collections.Counter(node.op_type for node in graph.node)
    assert ops["Attention"] == 2 and ops["RotaryEmbedding"] == 4 and ops["RMSNormalization"] == 5  # 2 a layer + final
    assert not {"Transpose", "Concat", "Softmax"} & set(ops)
    attention = next(node for node in graph.node if node.op_type == "Attention")
    assert {a.name: a.i for a in attention.attribute} == {"q_num_heads": 4, "kv_num_heads": 2}

    lm = OnnxCausalLM(tmp_path / "onnx")
    prompts = corpus_prompts(lm, 4, [5, 11, 17, 23])
    expected = _greedy_from_pytorch(AutoModelForCausalLM.from_pretrained(folder).eval(), prompts, 10)
    assert len({t for out in expected for t in out}) > 8, "outputs too uniform to reveal a difference"
    greedy = SamplingParams(max_new_tokens=10, stop_at_eos=False)
    assert [lm.generate_ids([p], greedy)[0] for p in prompts] == expected
    assert lm.generate_ids(prompts, greedy) == expected


def test_a_causal_lm_other_than_llama_is_traced_by_torch_onnx(tmp_path, tiny_tokenizer):
    """A gpt2 (learned positions, fused qkv, GELU): traced by `torch.onnx` with its KV cache, and its greedy tokens
    through the torch-free loop equal transformers' `generate`."""
    import onnx
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    from pocketlm.inference.lm_export import export_causal_lm

    eos = tiny_tokenizer.eos_token_id
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tiny_tokenizer), n_positions=128, n_embd=64, n_layer=2, n_head=4,
                                       bos_token_id=eos, eos_token_id=eos))
    folder = _wide_lm_folder(tmp_path, tiny_tokenizer, model)
    export_causal_lm(str(folder), tmp_path / "onnx", quantize=False)

    ops = {node.op_type for node in onnx.load(str(tmp_path / "onnx" / "model.onnx")).graph.node}
    assert "Attention" not in ops and {"Softmax", "Concat"} <= ops
    lm = OnnxCausalLM(tmp_path / "onnx")
    prompts = corpus_prompts(lm, 2, [6, 14])
    expected = _greedy_from_pytorch(AutoModelForCausalLM.from_pretrained(folder).eval(), prompts, 8)
    assert lm.generate_ids(prompts, SamplingParams(max_new_tokens=8, stop_at_eos=False)) == expected


def test_an_unknown_or_missing_lm_graph_is_refused_by_name(tiny_lm_onnx_repo, tmp_path):
    import shutil

    from pocketlm.errors import ConfigError
    from pocketlm.hub import ArtifactNotFoundError

    folder = Path(shutil.copytree(resolve(tiny_lm_onnx_repo), tmp_path / "lm"))
    with pytest.raises(ConfigError, match="unknown LM precision 'int4'"):
        OnnxCausalLM(folder, precision="int4")
    (folder / "model_static_quantized.onnx").unlink()
    with pytest.raises(ArtifactNotFoundError, match="no model_static_quantized.onnx .*export_lm_onnx.py"):
        OnnxCausalLM(folder, precision="int8-static")


def test_optimised_graph_cache_is_written_once_and_gives_the_same_tokens(tiny_lm_onnx_repo, prompts, tmp_path, monkeypatch):
    """The second load of a graph reads the optimised copy cached on the first (the server's start-up path) and
    computes exactly what the uncached session computes."""
    monkeypatch.setenv("POCKETLM_RUNS_DIR", str(tmp_path))
    first = OnnxCausalLM(resolve(tiny_lm_onnx_repo))
    cached = list((tmp_path / "ort-cache").glob("model-*.onnx"))
    assert len(cached) == 1
    written = cached[0].stat().st_mtime_ns
    second = OnnxCausalLM(resolve(tiny_lm_onnx_repo))
    assert cached[0].stat().st_mtime_ns == written  # read, not rewritten
    greedy = SamplingParams(max_new_tokens=8)
    assert first.generate_ids([prompts[5]], greedy) == second.generate_ids([prompts[5]], greedy)


def test_a_changed_graph_replaces_its_cached_copy(tiny_lm_onnx_repo, tmp_path, monkeypatch):
    """A graph written again (a republished model) gets a new cached copy, and the old one is removed; the cached
    copies of other graphs stay."""
    import os
    import shutil

    monkeypatch.setenv("POCKETLM_RUNS_DIR", str(tmp_path / "runs"))
    folder = Path(shutil.copytree(resolve(tiny_lm_onnx_repo), tmp_path / "lm"))
    OnnxCausalLM(folder)
    OnnxCausalLM(folder, precision="int8")
    cache = tmp_path / "runs" / "ort-cache"
    before = {p.name for p in cache.glob("*.onnx")}
    assert len(before) == 2
    graph = folder / "model.onnx"
    os.utime(graph, ns=(graph.stat().st_atime_ns, graph.stat().st_mtime_ns + 10**9))  # "republished"
    OnnxCausalLM(folder)
    after = {p.name for p in cache.glob("*.onnx")}
    assert len(after) == 2 and len(after - before) == 1
    assert {n for n in before if n.startswith("model_quantized-")} <= after  # the int8 graph's copy is untouched


def test_cached_steps_equal_a_full_recompute(lm, prompts):
    """Each token of the cached loop is the argmax of re-running the whole sequence so far without a cache,
    and the graph returns last-position logits only (the prefill skips the other positions' output matmul)."""
    prompt = prompts[10]
    new = lm.generate_ids([prompt], SamplingParams(max_new_tokens=6, stop_at_eos=False))[0]
    for step, token in enumerate(new):
        sequence = np.array([prompt + new[:step]])
        feed = {"input_ids": sequence, "attention_mask": np.ones_like(sequence), **lm._empty_cache(1)}
        if lm.uses_position_ids:
            feed["position_ids"] = np.arange(sequence.shape[1])[None]
        logits = lm.session.run(["logits"], feed)[0]
        assert logits.shape == (1, 1, lm.tokenizer.get_vocab_size()) and int(logits[0, -1].argmax()) == token


def test_greedy_outputs_identical_between_schemes(lm, prompts):
    params = SamplingParams(max_new_tokens=16)
    streamed: list[tuple[int, int]] = []
    reference = token_by_token(lm, prompts, params, on_token=lambda i, t: streamed.append((i, t)))
    assert len({t for out in reference.outputs for t in out}) > 20, "outputs too uniform to reveal a batching bug"
    assert [t for _, t in streamed] == [t for out in reference.outputs for t in out]  # every token was handed on, in order
    for run in (
        token_by_token(lm, prompts, params, use_cache=False),
        full_batch(lm, prompts, params),
        full_batch(lm, prompts, params, batch_size=4),
        full_batch(lm, prompts, params, batch_size=6, sort_by_length=True),
    ):
        assert run.outputs == reference.outputs, run.scheme
        assert run.padding_fraction > 0 or run.scheme == "token_by_token_no_cache"
    assert reference.generated_tokens == sum(map(len, reference.outputs)) and reference.tokens_per_s > 0


def test_rows_stop_independently_at_eos(lm, prompts):
    """A row that produces EOS ends there; the other rows of the batch carry on unchanged."""
    batch = [prompts[4], prompts[12]]
    free = lm.generate_ids(batch, SamplingParams(max_new_tokens=12, stop_at_eos=False))
    stopper = copy.copy(lm)  # same session; treat a token that row 0 produces at step 3 as end-of-text
    stopper.eos_token_id = free[0][3]
    stopped = stopper.generate_ids(batch, SamplingParams(max_new_tokens=12))
    for row, tokens in zip(free, stopped):
        cut = row.index(stopper.eos_token_id) + 1 if stopper.eos_token_id in row else len(row)
        assert tokens == row[:cut]
    assert len(stopped[0]) <= 4


def test_sampling_is_seeded_and_top_k_1_is_greedy(lm, prompts):
    prompt = [prompts[7]]
    sample = SamplingParams(max_new_tokens=12, do_sample=True, top_k=50, temperature=1.0, seed=3, stop_at_eos=False)
    first = lm.generate_ids(prompt, sample)
    assert lm.generate_ids(prompt, sample) == first
    others = [lm.generate_ids(prompt, SamplingParams(**{**sample.__dict__, "seed": s}))[0] for s in range(4, 8)]
    assert any(o != first[0] for o in others)
    top1 = SamplingParams(max_new_tokens=12, do_sample=True, top_k=1, seed=0, stop_at_eos=False)
    assert lm.generate_ids(prompt, top1) == lm.generate_ids(prompt, SamplingParams(max_new_tokens=12, stop_at_eos=False))


def test_streamed_text_adds_up_to_the_decoded_text(lm, prompts):
    """Each event carries the text its token adds; only a character still incomplete at the end is held back."""
    params = SamplingParams(max_new_tokens=20, stop_at_eos=False)
    pieces = list(lm.stream_text(prompts[3], params))
    streamed = "".join(text for _, text in pieces)
    decoded = lm.decode(prompts[3] + [token for token, _ in pieces])[len(lm.decode(prompts[3])) :]
    assert streamed and decoded.startswith(streamed)
    assert decoded[len(streamed) :].strip("\ufffd") == ""


def test_prompt_longer_than_the_context_is_refused(lm):
    from pocketlm.errors import ConfigError

    with pytest.raises(ConfigError, match="positions"):
        lm.generate_ids([[5] * lm.max_positions], SamplingParams(max_new_tokens=1))


def test_serving_path_never_imports_torch_or_transformers(tiny_lm_onnx_repo, tiny_qa_onnx_repo):
    """Start the real server in a fresh interpreter, call every endpoint, then look at sys.modules: no torch or
    transformers, and no huggingface_hub (with httpx, rich and click: a quarter of the start-up budget) to
    resolve models that are in the local hub folder."""
    script = r"""
import json, sys, threading, time, urllib.request
import uvicorn
from pocketlm.serving.app import create_app
from pocketlm.serving.models import load_models

app = create_app(load_models())
server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
threading.Thread(target=server.run, daemon=True).start()
while not server.started:
    time.sleep(0.01)
port = server.servers[0].sockets[0].getsockname()[1]

def call(path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request) as response:
        return response.status, response.read()

statuses = [call("/health")[0], call("/docs")[0], call("/openapi.json")[0],
            call("/generate", {"prompt": "The city", "max_new_tokens": 4})[0],
            call("/generate/stream", {"prompt": "The city", "max_new_tokens": 4})[0],
            call("/generate/batch", {"prompts": ["The city", "A"], "max_new_tokens": 4})[0],
            call("/qa", {"question": "Where?", "context": "In the city."})[0]]
server.should_exit = True
print(json.dumps({"statuses": statuses, "heavy": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "huggingface_hub", "httpx"))}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["statuses"] == [200] * 7
    assert result["heavy"] == []


def test_batching_benchmark_writes_its_results(tiny_lm_onnx_repo, tmp_path):
    import runpy

    main = runpy.run_path(str(REPO_ROOT / "benchmarks" / "batching.py"))["main"]
    assert main(["--prompts", "6", "--new_tokens", "4", "--batch_sizes", "1,3,6", "--repeats", "1",
                 "--output_dir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "batching.json").read_text())
    assert results["greedy_outputs_identical"]["fp32"] is True
    assert results["greedy_outputs_identical"]["int8-static"] is True  # the benchmark stops if batching changed them
    assert {r["scheme"] for r in results["runs"]} == {"token_by_token", "token_by_token_no_cache", "full_batch", "full_batch_sorted"}
    assert results["headline"]["fp32, 4 new tokens"]["speedup_full_batch_vs_token_by_token"] > 0 and results["machine"]
    assert (tmp_path / "batching.png").stat().st_size > 10_000
    assert "× token by token" in (tmp_path / "batching.md").read_text()


def test_lm_graph_benchmark_compares_the_two_exports_of_one_llama(tiny_lm_repo, tmp_path):
    """`benchmarks/lm_graph.py` exports the LM both ways, times each step on both, and checks their greedy tokens."""
    import runpy

    main = runpy.run_path(str(REPO_ROOT / "benchmarks" / "lm_graph.py"))["main"]
    assert main(["--model", tiny_lm_repo, "--runs", "10", "--output_dir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "lm_graph.json").read_text())
    assert results["greedy_token_agreement"] == 1.0
    nodes = results["nodes_after_ort_optimisation"]
    assert nodes["onnx_attention_ops"] < nodes["torch_onnx_trace"] / 2
    assert [row["step"].split(",")[0] for row in results["steps"]] == ["decode step", "decode step", "prefill", "generation"]
    assert all(row["onnx_attention_ops_ms"] > 0 and row["torch_onnx_trace_ms"] > 0 for row in results["steps"])
    assert (tmp_path / "lm_graph.png").stat().st_size > 10_000 and "graph nodes" in dict(results["figures"])
