"""publish() writes a complete artifact with a model card carrying the metrics; resolve() finds it offline."""

import json
import os

import pytest
import yaml

from pocketlm import BASE_ENCODER
from pocketlm.hub import ArtifactNotFoundError, ModelCardInfo, publish, resolve
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
