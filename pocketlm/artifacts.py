"""The artifacts pocketlm publishes, in one table: their default repo ids (`pocketlm/...`, the constants of
`pocketlm`), the environment variable that overrides each id at run time, and the script that builds it.

A Space takes no command-line flags, so the Spaces, the suite and the REST server read their model ids from
the environment (what Hugging Face Spaces calls *variables*): `POCKETLM_TINY_LM_ONNX=alice/tiny-lm-onnx`
overrides one artifact, `POCKETLM_NAMESPACE=alice` moves every artifact not overridden to `alice/...`.

Only the standard library here: the torch-free serving path imports it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pocketlm import MINILM_SQUAD, MINILM_SQUAD_ONNX, MINILM_SST2_PEFT, RAG_INDEX, TINY_LM, TINY_LM_ONNX, TINY_LM_RAG_LORA
from pocketlm.errors import ConfigError

DEFAULT_NAMESPACE = "pocketlm"
NAMESPACE_VAR = "POCKETLM_NAMESPACE"

# The Hub's rule for a user or organisation name: letters, digits, '-', '_', '.'; no leading or trailing
# '-'/'.', no '--' or '..'; at most 96 characters together with the repo name (checked by validate_repo_id).
_NAMESPACE = re.compile(r"^(?![-.])(?!.*(--|\.\.))[A-Za-z0-9_.-]{1,64}(?<![-.])$")


@dataclass(frozen=True)
class Artifact:
    default_id: str
    what: str
    built_by: str
    """The command that builds and publishes it (each takes `--push_to_hub --hub_model_id OWNER/NAME`)."""

    @property
    def name(self) -> str:
        return self.default_id.split("/", 1)[1]

    @property
    def env_var(self) -> str:
        return "POCKETLM_" + re.sub(r"[^A-Z0-9]", "_", self.name.upper())


ARTIFACTS: dict[str, Artifact] = {a.default_id: a for a in (
    Artifact(TINY_LM, "the tiny LM (PyTorch, transformers)", "python training_scripts/pretrain.py"),
    Artifact(TINY_LM_ONNX, "the tiny LM's ONNX export", "python training_scripts/export_lm_onnx.py"),
    Artifact(MINILM_SQUAD, "the QA model (PyTorch)", "python training_scripts/finetune_qa.py"),
    Artifact(MINILM_SQUAD_ONNX, "the QA model's ONNX export (fp32 + int8)", "python training_scripts/export_qa_onnx.py"),
    Artifact(RAG_INDEX, "the RAG index (FAISS, passages, query adapter)", "python training_scripts/build_rag_index.py"),
    Artifact(TINY_LM_RAG_LORA, "the RAG generator's LoRA", "python training_scripts/run_lora_finetune.py"),
    Artifact(MINILM_SST2_PEFT, "the SST-2 classifier (PEFT)", "python training_scripts/finetune_classifier.py"),
)}


def validate_namespace(namespace: str, where: str = "--namespace") -> str:
    """`namespace` if the Hub would take it as an owner name; else one line naming `where` it came from."""
    if not isinstance(namespace, str) or not _NAMESPACE.match(namespace):
        raise ConfigError(f"{where} {namespace!r} is not a Hub user or organisation name: use letters, digits, "
                          "'-', '_' and '.', without '--' or '..', not starting or ending with '-' or '.'")
    return namespace


def namespace(environ: Mapping[str, str] | None = None) -> str:
    """`POCKETLM_NAMESPACE` if set (validated), else `pocketlm`."""
    value = (os.environ if environ is None else environ).get(NAMESPACE_VAR, "").strip()
    return validate_namespace(value, NAMESPACE_VAR) if value else DEFAULT_NAMESPACE


def artifact_id(default_id: str, environ: Mapping[str, str] | None = None) -> str:
    """The id to load for the artifact `default_id` now: its own variable, else its name under
    `POCKETLM_NAMESPACE`, else `default_id` itself."""
    environ = os.environ if environ is None else environ
    artifact = ARTIFACTS[default_id]
    override = environ.get(artifact.env_var, "").strip()
    return override or f"{namespace(environ)}/{artifact.name}"


def variables_markdown(default_ids: Iterable[str], owner: str = DEFAULT_NAMESPACE) -> str:
    """A Markdown table of the variables that choose these artifacts (for a Space's README and the docs)."""
    rows = [f"| `{NAMESPACE_VAR}` | every artifact below not set on its own | `{owner}` |"]
    rows += [f"| `{ARTIFACTS[i].env_var}` | {ARTIFACTS[i].what} | `{owner}/{ARTIFACTS[i].name}` |" for i in default_ids]
    return "\n".join(["| variable | chooses | default |", "|---|---|---|", *rows])


def how_to_provide(repo_id: str) -> str:
    """What to do when `repo_id` cannot be loaded: build it, push it, point the Space at it."""
    artifact = next((a for a in ARTIFACTS.values() if repo_id.endswith("/" + a.name)), None)
    if artifact is None:
        return f"publish {repo_id} on the Hub, or pass another id or folder"
    return (f"build it with `make demo` or `{artifact.built_by}`, push it with "
            f"`--push_to_hub --hub_model_id {repo_id}`, or point to another copy with the variable "
            f"`{artifact.env_var}` (one artifact) or `{NAMESPACE_VAR}` (all of them)")
