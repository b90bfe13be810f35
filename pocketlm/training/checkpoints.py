"""Where an interrupted training run resumes from, and when it must refuse to start over.

Two kinds of checkpoint folders live in this project:
* pretraining's `<output_dir>/last` and `best`, swapped in whole by `pocketlm.io.replace_dir` — complete by
  construction; a kill between the swap's two renames is repaired here (`recover_dir`) before resuming;
* transformers `Trainer`'s `checkpoint-<step>` folders (QA, classifier, RAG LoRA), written file by file in
  place. `transformers.trainer_utils.get_last_checkpoint` takes the highest step even when a kill cut its
  save short, and every rerun then crashes on it; `newest_complete_checkpoint` takes the newest one whose
  last-written file (`trainer_state.json`: `Trainer._save_checkpoint` writes it after the weights,
  optimizer, scheduler and RNG states) is there and whose weights open, and removes the incomplete ones.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from pocketlm.errors import ConfigError
from pocketlm.io import recover_dir

PROGRESS_FILE = "progress.json"
PRETRAIN_EVIDENCE = ("best", "summary.json")
"""What a previous pretraining run leaves that a silent restart from step 0 would overwrite."""
TRAINER_STATE = "trainer_state.json"
WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors", "model.safetensors.index.json")


class ResumeError(ConfigError):
    """A previous run is in the output folder but cannot be resumed; the message says what to delete."""


def _json_problem(path: Path, key: str | None = None) -> str | None:
    if not path.is_file():
        return f"no {path.name}"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return f"unreadable {path.name}"
    if key is not None and key not in data:
        return f"{path.name} has no {key!r}"
    return None


def _weights_problem(folder: Path) -> str | None:
    """None if the folder's weights open (safetensors checks that the file covers its header), else why not."""
    from safetensors import SafetensorError, safe_open

    found = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not found:
        return "no weights"
    for path in found:
        if path.suffix == ".json":
            if (problem := _json_problem(path, "weight_map")) is not None:
                return problem
            shards = set(json.loads(path.read_text())["weight_map"].values())
            found += [folder / shard for shard in sorted(shards)]
            continue
        try:
            with safe_open(str(path), "pt") as weights:
                weights.keys()
        except (SafetensorError, OSError) as err:
            return f"{path.name} does not load ({str(err).splitlines()[0]})"
    return None


def trainer_checkpoint_problem(folder: str | Path) -> str | None:
    """Why a Trainer `checkpoint-<step>` folder cannot be resumed from, or None when it is complete."""
    folder = Path(folder)
    if (problem := _json_problem(folder / TRAINER_STATE, "global_step")) is not None:
        return problem
    return _weights_problem(folder)


def _step(folder: Path) -> int:
    return int(folder.name.rsplit("-", 1)[1])


def newest_complete_checkpoint(output_dir: str | Path, log: Callable[[str], None] = print) -> str | None:
    """The newest complete `checkpoint-<step>` in `output_dir` (None if none); newer incomplete ones are
    removed — a resumed run saves its next checkpoints under the same names — and one line says so."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    candidates = sorted((p for p in output_dir.iterdir() if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)),
                        key=_step, reverse=True)
    removed = []
    chosen = None
    for folder in candidates:
        problem = trainer_checkpoint_problem(folder)
        if problem is None:
            chosen = folder
            break
        removed.append(f"{folder.name} ({problem})")
        shutil.rmtree(folder, ignore_errors=True)
    if removed:
        log(f"removed incomplete checkpoint(s) {', '.join(removed)}: a save was interrupted; "
            + (f"resuming from {chosen}" if chosen else "starting from the beginning"))
    return str(chosen) if chosen else None


def check_resume_from(path: str, flag: str = "--resume_from_checkpoint") -> str:
    """An explicitly named checkpoint must exist and be complete; one line says what is wrong otherwise."""
    if not Path(path).is_dir():
        raise ConfigError(f"path does not exist: {path} ({flag})")
    if (problem := trainer_checkpoint_problem(path)) is not None:
        raise ResumeError(f"{path} is an incomplete checkpoint ({problem}; {flag}): name an earlier one or delete it")
    return path


def pretrain_resume_point(output_dir: str | Path, accelerator=None, log: Callable[[str], None] = print) -> Path | None:
    """The complete `<output_dir>/last` to resume from, or None for a folder no run has used.

    First repairs an interrupted swap of `last` or `best` (main process only; the others wait). Refuses,
    in one line naming what to delete, a folder where a previous run left `best` or a summary but no
    complete `last`: starting at step 0 there would silently overwrite the earlier run's best model.
    """
    output_dir = Path(output_dir)
    if accelerator is None or accelerator.is_main_process:
        for name in ("last", "best"):
            if (note := recover_dir(output_dir / name)) is not None:
                log(note)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    last = output_dir / "last"
    if last.is_dir():
        # `last` only ever appears whole (replace_dir); its progress.json, written last, is the completion marker.
        if (problem := _json_problem(last / PROGRESS_FILE, "args")) is None:
            return last
        raise ResumeError(f"{last} is incomplete ({problem}): delete {output_dir} to start over, "
                          "or pass --resume false (which replaces it and its best/)")
    evidence = [name for name in PRETRAIN_EVIDENCE if (output_dir / name).exists()]
    if evidence:
        raise ResumeError(f"{output_dir} holds a previous run ({', '.join(evidence)}) but no checkpoint to resume from: "
                          "delete it to start over, pass --resume false to overwrite it, or choose another --output_dir")
    return None


RUN_IDENTITY = "run_identity.json"


def weights_fingerprint(folder: str | Path) -> str:
    """SHA-256 over a model folder's safetensors files: the same id or path may hold other weights after a
    retraining, and a run resumed on them would continue from checkpoints of another base."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.safetensors")):
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def claim_run_dir(output_dir: str | Path, identity: dict, flag: str = "--output_dir") -> None:
    """Record what a run in `output_dir` is (`identity`: readable names → values, e.g. its settings and base
    weights), or refuse when the folder holds another run:
    its checkpoints would otherwise be resumed into this one (a LoRA of the old base "trained" in no steps)."""
    from pocketlm.io import write_json

    path = Path(output_dir) / RUN_IDENTITY
    if path.is_file():
        recorded = json.loads(path.read_text())
        changed = sorted(key for key in identity.keys() | recorded.keys() if identity.get(key) != recorded.get(key))
        if changed:
            raise ResumeError(f"{output_dir} holds a run whose {' and '.join(changed)} differ from this one's: its "
                              f"checkpoints cannot continue this run; delete the folder or pass another {flag}")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, identity)
