"""publish() writes a complete artifact with a model card carrying the metrics; resolve() finds it offline."""

import json
import os
from pathlib import Path

import pytest
import yaml

from pocketlm import BASE_ENCODER
from pocketlm.hub import REPO_ID_RULES, ArtifactNotFoundError, ModelCardInfo, publish, resolve
from pocketlm.settings import hub_dir


def _card(**metrics):
    return ModelCardInfo(
        title="demo", summary="A demo artifact.", how_to_load="print('hi')", pipeline_tag="text-generation",
        eval_dataset="wikitext", eval_dataset_name="WikiText-2", eval_split="validation", metrics=metrics,
        datasets=["Salesforce/wikitext"], base_model="gpt2", license="cc-by-sa-4.0",
    )


def test_publish_writes_artifact_card_and_metrics():
    folder = publish("pocketlm/test-publish", lambda d: (d / "weights.txt").write_text("w"), _card(perplexity=88.5))
    assert folder == hub_dir() / "pocketlm" / "test-publish"
    assert (folder / "weights.txt").read_text() == "w"
    assert json.loads((folder / "metrics.json").read_text()) == {"perplexity": 88.5}
    readme = (folder / "README.md").read_text()
    meta = yaml.safe_load(readme.split("---")[1])
    assert meta["license"] == "cc-by-sa-4.0" and meta["base_model"] == "gpt2"
    assert meta["datasets"] == ["Salesforce/wikitext"]
    result = meta["model-index"][0]["results"][0]
    assert result["metrics"][0] == {"type": "perplexity", "value": 88.5, "name": "perplexity"}
    assert "print('hi')" in readme
    assert resolve("pocketlm/test-publish") == str(folder)
    mask = os.umask(0)
    os.umask(mask)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~mask  # readable like any folder the user makes, not 0700


def test_failed_publish_keeps_the_previous_artifact():
    publish("pocketlm/test-atomic", lambda d: (d / "v.txt").write_text("1"), _card(f1=1.0))

    def broken(folder):
        (folder / "v.txt").write_text("2")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        publish("pocketlm/test-atomic", broken, _card(f1=2.0))
    folder = hub_dir() / "pocketlm" / "test-atomic"
    assert (folder / "v.txt").read_text() == "1"
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]


def test_resolve_offline_errors_name_what_is_missing():
    with pytest.raises(ArtifactNotFoundError, match="pocketlm/never-published"):
        resolve("pocketlm/never-published")
    with pytest.raises(ArtifactNotFoundError, match="does not exist: ./no/such/checkpoint"):
        resolve("./no/such/checkpoint")


def test_base_encoder_resolves_to_the_packaged_minilm():
    path = resolve(BASE_ENCODER)
    config = json.loads(open(f"{path}/config.json").read())
    assert config["hidden_size"] == 384 and config["num_hidden_layers"] == 6
    assert resolve("minilm") == path


# ---------------------------------------------------------------- repo ids: OWNER/NAME, never a path


@pytest.mark.parametrize("repo_id", ["..", "pocketlm/..", "/tmp/x", "a/b/c", "nobody", "a--b/c", "a/b.git", "-a/b", "ä/b", "a/" + "b" * 97])
def test_publish_refuses_what_is_not_a_repo_id_and_touches_nothing(repo_id, tmp_path):
    from pocketlm.hub import InvalidRepoIdError

    before = sorted(p.name for p in hub_dir().parent.iterdir())
    with pytest.raises(InvalidRepoIdError, match="is not a repo id: use OWNER/NAME"):
        publish(repo_id, lambda d: (d / "x").write_text("x"), _card())
    assert sorted(p.name for p in hub_dir().parent.iterdir()) == before


REPO_ID_CANDIDATES = ["pocketlm/tiny-lm", "a/b", "_a/b_", "x/y_z.1", "Owner-1/name.v2", "a/" + "b" * 96, "a/" + "b" * 97,
                      "a./b", "a/b.", "a-/b", "a/-b", "a/b.git", "a/..", "a..b/c", "a--b/c", "../x", "a/b/c", "ä/b", "a b/c",
                      "a/b\n", "", "/", "a/"]


@pytest.mark.parametrize("repo_id", REPO_ID_CANDIDATES)
def test_the_quick_repo_id_check_accepts_only_what_the_hub_accepts(repo_id):
    """`_plainly_valid` spares the server's start-up the import of huggingface_hub: it may send an id on to the
    Hub's own check, never accept one that check refuses."""
    from huggingface_hub.utils import HFValidationError
    from huggingface_hub.utils import validate_repo_id as hub_validate_repo_id

    from pocketlm.hub import _plainly_valid

    try:
        hub_validate_repo_id(repo_id)
        hub_accepts = repo_id.count("/") == 1
    except HFValidationError:
        hub_accepts = False
    assert not _plainly_valid(repo_id) or hub_accepts
    if repo_id in ("pocketlm/tiny-lm", "a/b", "Owner-1/name.v2"):
        assert _plainly_valid(repo_id)  # the ordinary ids take the quick path


def test_resolve_does_not_walk_out_of_the_hub_folder():
    with pytest.raises(ArtifactNotFoundError, match="neither an existing path nor a valid repo id: 'no-such-owner/..'"):
        resolve("no-such-owner/..")  # once: the hub folder itself


SCRIPTS_AND_FLAGS = [
    ("finetune_qa.py", "--output_repo"), ("export_qa_onnx.py", "--output_repo"), ("export_lm_onnx.py", "--repo_id"),
    ("pretrain.py", "--repo_id"), ("build_rag_index.py", "--repo_id"), ("run_lora_finetune.py", "--repo_id"),
    ("finetune_classifier.py", "--repo_id"),
]


@pytest.mark.parametrize(("script", "flag"), SCRIPTS_AND_FLAGS)
def test_scripts_refuse_a_path_as_repo_id_in_one_line(script, flag, capsys, monkeypatch):
    """`--output_repo ..` once deleted the runs folder (the hub folder's parent); now it is a one-line usage error."""
    import runpy
    import sys

    from pocketlm.cli import run
    from pocketlm.settings import REPO_ROOT, runs_dir

    runs_dir().mkdir(parents=True, exist_ok=True)
    (runs_dir() / "keep.txt").write_text("mine")
    monkeypatch.setattr(sys, "argv", [script, flag, ".."])
    main = runpy.run_path(str(REPO_ROOT / "training_scripts" / script), run_name=script.removesuffix(".py"))["main"]
    with pytest.raises(SystemExit) as exit_info:
        run(lambda: main())
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err == f"error: {flag} '..' is not a repo id: use {REPO_ID_RULES}"
    assert (runs_dir() / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(("script", "flag"), SCRIPTS_AND_FLAGS)
def test_pushing_offline_or_without_a_token_is_one_line_before_any_work(script, flag, capsys, monkeypatch, tmp_path):
    """Offline (the tests' setting) and then online without any token: each publishing script stops at once."""
    import runpy
    import sys

    import huggingface_hub.constants

    from pocketlm.cli import run
    from pocketlm.settings import REPO_ROOT

    main = runpy.run_path(str(REPO_ROOT / "training_scripts" / script), run_name=script.removesuffix(".py"))["main"]
    monkeypatch.setattr(sys, "argv", [script, "--push_to_hub", "--output_dir", str(tmp_path / "run")] if script.startswith(
        "finetune") else [script, "--push_to_hub"])
    with pytest.raises(SystemExit) as exit_info:
        run(lambda: main())
    assert exit_info.value.code == 2 and capsys.readouterr().err == (
        "error: --push_to_hub needs the Hub, but it is offline (HF_HUB_OFFLINE=1): set HF_HUB_OFFLINE=0 to push\n")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))  # no `hf auth login`
    with pytest.raises(SystemExit) as exit_info:
        run(lambda: main())
    assert exit_info.value.code == 2 and capsys.readouterr().err == (
        "error: --push_to_hub needs a Hugging Face token: pass --hub_token, set HF_TOKEN or run `hf auth login`\n")


def test_resolve_downloads_by_repo_id_then_finds_it_in_the_cache_offline(online_hub, tmp_path, monkeypatch):
    """Online, an id that is not in the local hub folder is downloaded into the Hugging Face cache; offline, the
    cache answers, as it does for transformers (before, `resolve` refused any id outside the hub folder offline)."""
    import huggingface_hub.constants

    from pocketlm.hub import push

    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    folder = publish("alice/cached", lambda d: (d / "model.safetensors").write_bytes(b"\0weights" * 64), _card(f1=1.0))
    push(folder, "alice/cached")
    (folder / "model.safetensors").unlink()
    folder.rename(tmp_path / "moved-away")  # only the Hub has it now

    downloaded = resolve("alice/cached")
    assert downloaded.startswith(str(tmp_path / "hf-cache")) and "snapshots" in downloaded
    assert (Path(downloaded) / "model.safetensors").read_bytes() == b"\0weights" * 64
    with pytest.raises(ArtifactNotFoundError, match="'alice/missing' is not in the local hub folder .* could not be "
                                                    "downloaded from http://127.0.0.1:.*: not found on the Hub"):
        resolve("alice/missing")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert resolve("alice/cached") == downloaded
    with pytest.raises(ArtifactNotFoundError, match="neither in the local hub folder .* nor in the Hugging Face cache"):
        resolve("alice/missing")
