"""Crash-consistent writes: every file or folder a kill or a full disk could leave half-done goes through here.

Two primitives, both "old or new, never half":
* `atomic_write(path, write)` — one file: written to a temporary sibling, flushed to disk (`fsync`), renamed
  over `path`, and the rename itself made durable (`fsync` of the folder).
* `replace_dir(staging, target)` — one folder (a checkpoint, a published artifact, a prepared corpus): the
  caller writes it completely into `staging`; every file in it is flushed, then the old `target` is renamed
  to `.<name>.old`, `staging` to `target`, and only then is the old copy deleted. A kill between the two
  renames leaves `.<name>.old` and no `target`; `recover_dir(target)` (which `replace_dir` also runs first)
  puts the old copy back, so the next run finds a complete artifact either way.

Why hand-written: neither the standard library nor the ML libraries offer a durable folder swap (Trainer,
accelerate and `save_pretrained` write in place), and POSIX has no atomic exchange of two non-empty folders.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


def fsync_path(path: str | Path) -> None:
    """Flush a file's data, or a folder's entries (the names renamed into it), to disk."""
    if os.name != "posix" and Path(path).is_dir():  # Windows cannot open a folder to fsync it
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """`fsync` every file and folder under `root` (what a folder swap must do before it publishes the folder)."""
    for folder, _, files in os.walk(root):
        for name in files:
            fsync_path(os.path.join(folder, name))
        fsync_path(folder)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)`, then rename the flushed temp file over `path`: readers see the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(str(tmp))
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


# ---------------------------------------------------------------- folders


def retired_path(target: Path) -> Path:
    """Where `replace_dir` parks the previous copy of `target` while the new one is renamed in."""
    return target.with_name(f".{target.name}.old")


def staging_path(target: Path) -> Path:
    """A staging folder beside `target`, named after this process so that `recover_dir` can tell a dead
    writer's leftovers from a live one's."""
    return target.with_name(f".{target.name}.staging-{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def recover_dir(target: Path, own_staging: Path | None = None) -> str | None:
    """Complete what an interrupted `replace_dir(…, target)` left; returns a line saying what it did, or None.

    * `target` missing, `.<name>.old` present: the kill came between the two renames — the old copy goes back.
    * both present: the swap finished but the old copy was not deleted yet — it is deleted now.
    * `.<name>.staging-<pid>` of a process that no longer runs: a half-written new copy — deleted.
    While a live process's staging folder is there, that process may be mid-swap: nothing is restored.
    Also accepts the `.<name>.old-<pid>` names that earlier versions used.
    """
    target = Path(target)
    if not target.parent.is_dir():
        return None
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.staging-(\d+)$")
    live_writer = False
    for staging in target.parent.glob(f".{glob.escape(target.name)}.staging-*"):
        match = pattern.match(staging.name)
        if match and not _pid_alive(int(match.group(1))):
            shutil.rmtree(staging, ignore_errors=True)
        elif match and staging != own_staging:
            live_writer = True
    if live_writer:  # another process is between its two renames right now: its swap is not ours to finish
        return None
    done = None
    retired = sorted(target.parent.glob(f".{glob.escape(target.name)}.old*"), key=lambda p: p.stat().st_mtime)
    if retired and not target.exists():
        os.replace(retired.pop(), target)
        fsync_path(target.parent)
        done = f"restored {target} from its previous copy (a replacement of it was interrupted)"
    for old in retired:
        shutil.rmtree(old, ignore_errors=True)
    return done


def replace_dir(staging: Path, target: Path) -> None:
    """Swap a fully written `staging` folder into `target`: readers see the old or the new artifact, never half.

    The old copy is deleted only once the new one is in place; see the module docstring for the crash cases.
    On an error (a rename refused) the old copy is put back and the error raised; `staging` is the caller's.
    """
    staging, target = Path(staging), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fsync_tree(staging)
    recover_dir(target, own_staging=staging)
    retired = retired_path(target)
    if target.exists():
        os.replace(target, retired)
    try:
        fsync_path(target.parent)
        os.replace(staging, target)
        fsync_path(target.parent)
    except BaseException:
        if retired.exists() and not target.exists():
            os.replace(retired, target)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def write_dir(target: Path, write: Callable[[Path], None]) -> Path:
    """Build a folder with `write(staging)` beside `target`, then swap it in whole (`replace_dir`).

    Any error leaves `target` as it was and removes the half-written staging folder.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_path(target)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        write(staging)
        replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


# ---------------------------------------------------------------- secrets

SECRET_KEY = re.compile(r"^(token|hub_token|hf_token|api_token|access_token|auth_token|push_to_hub_token|password|secret|api_key)$",
                        re.IGNORECASE)
"""Argument names whose value is a credential: `hub_token`, `token`, `hf_token`... (not `pad_token_id`)."""
SECRET_VALUE = re.compile(r"\bhf_[A-Za-z0-9]{8,}")
"""What a Hugging Face access token looks like (`hf_` + letters and digits)."""
REDACTED = "<redacted>"


def without_secrets(data: Any) -> Any:
    """A copy of `data` (dicts, lists, strings) with credentials replaced by `<redacted>`, for any file or log.

    Keys named like a credential lose their value whatever it is; any string that looks like a Hugging Face
    token is masked wherever it sits. transformers' `TrainingArguments.to_dict` does the same for `*_token`.
    """
    if isinstance(data, dict):
        return {k: (REDACTED if v and isinstance(k, str) and SECRET_KEY.search(k) else without_secrets(v))
                for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(without_secrets(v) for v in data)
    if isinstance(data, str):
        return SECRET_VALUE.sub(REDACTED, data)
    return data
