"""The Hub round trip, against the Hub test double (tests/hub_double.py) on loopback.

Each training script that publishes one of the six artifacts runs as a user would run it, with `--push_to_hub
--hub_model_id alice/NAME` and `HF_ENDPOINT`/`HF_TOKEN` pointing at the double. Then a second process with an
empty Hugging Face cache and an empty local hub folder loads every artifact by repo id with the standard calls
(`from_pretrained`, `snapshot_download`, `pipeline(...)`, each model card's idiom as written) and must compute
exactly what the same calls compute on the folders the scripts published locally. Finally, with
`HF_HUB_OFFLINE=1`, the artifacts now in that cache load by repo id through `pocketlm.hub.resolve`. The token
the scripts pushed with is a canary: it must appear in no file they wrote, nothing uploaded and nothing printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hub_double import client_env, hub_double
from pocketlm.settings import REPO_ROOT

pytestmark = pytest.mark.slow
OWNER = "alice"
TOKEN = "hf_CANARYroundtrip7Qz4"
OUTPUTS: list[str] = []  # everything the subprocesses printed
ARTIFACTS = ["tiny-lm", "tiny-lm-onnx", "minilm-squad", "minilm-squad-onnx", "rag-index", "tiny-lm-rag-lora"]


def _run(args: list[str], env: dict, timeout: int = 600) -> str:
    result = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    OUTPUTS.extend([result.stdout, result.stderr])
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result.stdout


def _env(endpoint: str, tmp: Path, name: str, **extra) -> dict:
    env = client_env(endpoint, hf_home=tmp / f"hf-{name}", token=extra.pop("token", TOKEN))
    env.update({"POCKETLM_HUB_DIR": str(tmp / f"hub-{name}"), "POCKETLM_RUNS_DIR": str(tmp / f"runs-{name}"),
                "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]), **extra})
    return env


def push_all(endpoint: str, tmp: Path, corpus: Path, tiny_bert: str, rag_files) -> dict:
    """Run the publishing scripts (and the query adapter's training) with --push_to_hub; returns their environment."""
    env = _env(endpoint, tmp, "push")
    hub = ["--push_to_hub", "--hub_model_id"]
    passages, qa = rag_files
    _run(["training_scripts/pretrain.py", "--preset", "smoke", "--data_dir", str(corpus), "--output_dir",
          str(tmp / "runs-push/pretrain"), *hub, f"{OWNER}/tiny-lm"], env)
    _run(["training_scripts/export_lm_onnx.py", "--model_name_or_path", f"{OWNER}/tiny-lm", "--check_prompts", "2",
          "--latency_runs", "0", *hub, f"{OWNER}/tiny-lm-onnx"], env)
    _run(["training_scripts/finetune_qa.py", "--preset", "smoke", "--model_name_or_path", tiny_bert, "--output_dir",
          str(tmp / "runs-push/qa"), *hub, f"{OWNER}/minilm-squad"], env)
    _run(["training_scripts/export_qa_onnx.py", "--model", f"{OWNER}/minilm-squad", "--eval_samples", "4", *hub,
          f"{OWNER}/minilm-squad-onnx"], env)
    adapter = tmp / "runs-push" / "query-adapter"  # the retriever's query adapter travels inside the index repo
    _run(["training_scripts/train_query_adapter.py", "--max_articles", "2", "--held_out_fraction", "0.5", "--epochs", "3",
          "--measure_on_dev", "false", "--output_dir", str(adapter)], env)
    _run(["training_scripts/build_rag_index.py", "--passages", str(passages), "--qa", str(qa), "--max_distractors", "10",
          "--opq_dim", "32", "--pq_m", "8", "--pq_bits", "4", "--query_adapter", str(adapter), *hub, f"{OWNER}/rag-index"], env)
    _run(["training_scripts/run_lora_finetune.py", "--preset", "smoke", "--model_name_or_path", f"{OWNER}/tiny-lm",
          "--train_pairs", "2", "--eval_pairs", "2", "--num_train_epochs", "1", *hub, f"{OWNER}/tiny-lm-rag-lora"], env)
    return env


@pytest.fixture(scope="module")
def roundtrip(tmp_path_factory, corpus_texts, tiny_bert, rag_files):
    from pocketlm.data.corpus import Document, clean_text, prepare_corpus

    tmp = tmp_path_factory.mktemp("roundtrip")
    corpus = tmp / "corpus"
    prepare_corpus([Document(f"a{i}", clean_text(t)[:6000]) for i, t in enumerate(corpus_texts[:4])], corpus,
                   vocab_size=300, chunk_length=32, validation_ratio=0.25)
    with hub_double(tmp / "storage") as endpoint:
        push_env = push_all(endpoint, tmp, corpus, tiny_bert, rag_files)
        local = {name: str(Path(push_env["POCKETLM_HUB_DIR"]) / OWNER / name) for name in ARTIFACTS}
        loader = str(REPO_ROOT / "tests" / "hub_roundtrip_loads.py")
        reference_env = _env(endpoint, tmp, "reference", POCKETLM_HUB_DIR=push_env["POCKETLM_HUB_DIR"])  # the idioms find the local folders
        reference = json.loads(_run([loader, json.dumps(local)], reference_env).splitlines()[-1])
        fresh = _env(endpoint, tmp, "fresh", token=None)  # a reader needs no token
        downloaded = json.loads(_run([loader, json.dumps({n: f"{OWNER}/{n}" for n in ARTIFACTS})], fresh).splitlines()[-1])
        requests = list(hub_double.app.state.requests)
    yield {"tmp": tmp, "local": local, "reference": reference, "downloaded": downloaded, "fresh_env": fresh,
           "requests": requests, "storage": tmp / "storage"}


def test_every_script_pushes_weights_tokenizer_card_and_metrics(roundtrip):
    """Each repo on the double holds exactly the files the script published locally, byte for byte."""
    from hub_double import HubStorage

    storage = HubStorage(roundtrip["storage"])
    for name in ARTIFACTS:
        repo = storage.repo("model", f"{OWNER}/{name}")
        assert repo is not None, f"{OWNER}/{name} was not created"
        _, files = storage.commit_files(repo, "main")
        folder = Path(roundtrip["local"][name])
        local_files = {str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file()}
        assert set(files) == set(local_files), name
        for path, entry in files.items():
            assert (storage.objects / entry["sha256"]).read_bytes() == local_files[path].read_bytes(), (name, path)
        assert {"README.md", "metrics.json"} <= set(files), name
        weights = {p for p in files if p.endswith((".safetensors", ".onnx", ".faiss"))}
        assert weights and all(files[p]["lfs"] for p in weights), name  # weights travel by Git LFS, as on the Hub
        if name == "rag-index":
            assert any("query_adapter" in path for path in files), sorted(files)
        else:
            assert "tokenizer.json" in files, name
    assert ("POST", f"/{OWNER}/tiny-lm.git/info/lfs/objects/batch") in roundtrip["requests"]


@pytest.mark.parametrize("name", ARTIFACTS)
def test_a_fresh_process_loads_each_artifact_by_repo_id_with_identical_outputs(roundtrip, name):
    reference, downloaded = roundtrip["reference"][name], roundtrip["downloaded"][name]
    if "files" in reference:
        assert "README.md" in downloaded["files"] and reference["files"] == downloaded["files"]
    assert reference == downloaded  # the card's idiom ran as written in both, and printed the same
    cache = Path(roundtrip["fresh_env"]["HF_HOME"]) / "hub"
    assert (cache / f"models--{OWNER}--{name}" / "snapshots").is_dir()  # it really came from the Hub double
    assert not Path(roundtrip["fresh_env"]["POCKETLM_HUB_DIR"]).exists()


def test_the_lora_names_its_base_by_hub_id(roundtrip):
    assert roundtrip["downloaded"]["tiny-lm-rag-lora"]["base"] == f"{OWNER}/tiny-lm"


def test_offline_an_artifact_in_the_hf_cache_resolves_by_repo_id(roundtrip):
    """With HF_HUB_OFFLINE=1 (and the double gone), the cache the fresh process filled answers `resolve`."""
    env = {**roundtrip["fresh_env"], "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    code = ("import json, sys; from pocketlm.hub import resolve; "
            f"print(json.dumps([resolve('{OWNER}/' + n) for n in {ARTIFACTS!r}]))")
    paths = json.loads(_run(["-c", code], env).splitlines()[-1])
    cache = Path(env["HF_HOME"]) / "hub"
    for name, path in zip(ARTIFACTS, paths):
        assert Path(path).is_relative_to(cache / f"models--{OWNER}--{name}" / "snapshots")
        assert (Path(path) / "README.md").is_file()
    missing = subprocess.run([sys.executable, "-c", "from pocketlm.cli import run; from pocketlm.hub import resolve; "
                              "run(lambda: resolve('alice/never-pushed'))"], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "'alice/never-pushed' is neither in the local hub folder" in missing.stderr and "HF_HUB_OFFLINE=1" in missing.stderr


def test_the_push_token_is_nowhere(roundtrip):
    """The canary token: not in the runs, the local hub folders, the Hugging Face caches, the uploads, or any output."""
    searched = 0
    for path in roundtrip["tmp"].rglob("*"):
        if path.is_file():
            searched += 1
            assert TOKEN.encode() not in path.read_bytes(), f"token written to {path}"
    assert searched > 100 and (roundtrip["storage"] / "objects").is_dir()
    assert OUTPUTS and not [text for text in OUTPUTS if TOKEN in text]
