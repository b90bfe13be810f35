"""`make demo` uses the Hub when it can: artifacts found under the namespace are downloaded, not trained.

Against the Hub test double (tests/hub_double.py): a namespace holding every artifact leaves nothing to build;
one holding only the tiny LM leaves the rest to build and skips the corpus preparation that fed it; offline,
the plan is what it always was.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hub_double import client_env, hub_double
from pocketlm.settings import REPO_ROOT

NAMES = ["tiny-lm", "tiny-lm-onnx", "minilm-squad", "minilm-squad-onnx", "rag-index", "tiny-lm-rag-lora"]
PUSH = """
import sys, pathlib
from pocketlm.hub import push
root = pathlib.Path(sys.argv[1])
for repo_id in sys.argv[2:]:
    folder = root / repo_id
    folder.mkdir(parents=True)
    (folder / "README.md").write_text(f"---\\nlicense: apache-2.0\\n---\\n# {repo_id}\\n")
    (folder / "model.safetensors").write_bytes(repo_id.encode() * 100)
    push(folder, repo_id)
"""


def _demo(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pocketlm.demo", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def hub_with(tmp_path_factory):
    """Start the double holding all six artifacts under `alice` and the tiny LM alone under `bob`."""
    tmp = tmp_path_factory.mktemp("demo-hub")
    with hub_double(tmp / "storage") as endpoint:
        env = client_env(endpoint, hf_home=tmp / "hf-push")
        env["PYTHONPATH"] = str(REPO_ROOT)
        ids = [f"alice/{name}" for name in NAMES] + ["bob/tiny-lm"]
        pushed = subprocess.run([sys.executable, "-c", PUSH, str(tmp / "pushed"), *ids], env=env, capture_output=True,
                                text=True, timeout=300)
        assert pushed.returncode == 0, pushed.stderr[-3000:]

        def client(name: str, **extra) -> dict:
            env = client_env(endpoint, hf_home=tmp / f"hf-{name}", token=None)
            env.update({"PYTHONPATH": str(REPO_ROOT), "POCKETLM_HUB_DIR": str(tmp / f"hub-{name}"),
                        "POCKETLM_RUNS_DIR": str(tmp / f"runs-{name}"), **extra})
            return env

        yield client


def _plan(stdout: str) -> dict[str, str]:
    """Step title → its state label, from the plan the demo prints."""
    rows = [line.split("]", 1)[1].strip() for line in stdout.splitlines() if line.startswith("  [")]
    return {row[5:].strip(): row[:5].strip() for row in rows}


def test_a_namespace_holding_every_artifact_leaves_nothing_to_build(hub_with):
    env = hub_with("alice")
    listed = _demo(env, "--namespace", "alice", "--no-launch", "--list")
    assert listed.returncode == 0, listed.stderr
    plan = _plan(listed.stdout)
    assert "to do" not in plan.values(), listed.stdout
    assert list(plan.values()).count("Hub") == 6 and list(plan.values()).count("skip") == 2  # corpus, query adapter
    assert "6 to download from the Hub (alice/...)" in listed.stdout

    built = _demo(env, "--namespace", "alice", "--no-launch")
    assert built.returncode == 0, built.stderr[-3000:]
    assert built.stdout.count("downloading alice/") == 6 and "$ " not in built.stdout  # no command ran: nothing trained
    cache = os.path.join(env["HF_HOME"], "hub")
    assert sorted(d for d in os.listdir(cache) if d.startswith("models--")) == sorted(f"models--alice--{n}" for n in NAMES)

    again = _demo({**env, "HF_HUB_OFFLINE": "1"}, "--namespace", "alice", "--no-launch", "--list")  # from the cache now
    assert set(_plan(again.stdout).values()) <= {"done", "skip"} and "8 steps, 6 already done" in again.stdout


def test_a_namespace_with_some_artifacts_builds_only_the_rest(hub_with):
    listed = _demo(hub_with("bob"), "--no-launch", "--list", "--namespace", "bob")
    plan = _plan(listed.stdout)
    states = {title.split(" (")[0]: state for title, state in plan.items()}
    assert states["Pretrain the tiny LM and publish bob/tiny-lm"] == "Hub"
    assert states["Prepare the corpus"] == "skip"  # it only feeds the tiny LM
    assert states["Export the tiny LM to ONNX with its KV cache"] == "to do"
    assert states["Train the RAG query adapter"] == "to do"


def test_the_namespace_comes_from_the_environment_and_offline_changes_nothing(hub_with):
    env = hub_with("offline", HF_HUB_OFFLINE="1", POCKETLM_NAMESPACE="alice")
    listed = _demo(env, "--no-launch", "--list")
    assert listed.returncode == 0
    assert set(_plan(listed.stdout).values()) == {"to do"}
    assert "the Hub is offline (HF_HUB_OFFLINE=1)" in listed.stdout

    online = _demo(hub_with("env-ns", POCKETLM_NAMESPACE="alice"), "--no-launch", "--list")
    assert "6 to download from the Hub (alice/...)" in online.stdout


def test_a_malformed_namespace_is_one_line(hub_with):
    result = _demo(hub_with("bad"), "--namespace", "not/a-name", "--list")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: --namespace 'not/a-name' is not a Hub user or organisation name")
