"""What a staged Space imports, read from its code: the `pocketlm` modules its `app.py` reaches and the pinned
distributions of every third-party import among them — so a Space's `requirements.txt` is derived, never kept
by hand, and a missing one is a test failure rather than a crash on Hugging Face.

Imports are read with `ast` (nothing is executed), including those inside functions (the Spaces import their
heavy libraries lazily); skipped are `if TYPE_CHECKING:` blocks and imports guarded by `except ImportError`
(optional by construction: the code runs without them). Module names map to distributions
with `importlib.metadata.packages_distributions()` of the running environment, and each distribution to
its pin in `requirements-lock.txt`.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

from pocketlm.errors import PocketLMError
from pocketlm.settings import REPO_ROOT

PACKAGE = "pocketlm"
LOCK_FILE = REPO_ROOT / "requirements-lock.txt"


class UnpinnedImportError(PocketLMError):
    """Staged code imports a module that no pinned distribution provides."""


def imported_modules(source: str) -> set[str]:
    """Absolute names of every module `source` imports (for `from a import b`: `a` and `a.b`)."""
    names: set[str] = set()
    tree = ast.parse(source)
    skipped = {id(node) for node in _type_checking_blocks(tree)} | {id(node) for node in _optional_imports(tree)}
    for node in _walk_skipping(tree, skipped):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _type_checking_blocks(tree: ast.AST) -> list[ast.If]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)]


def _optional_imports(tree: ast.AST) -> list[ast.stmt]:
    """The statements of every `try:` whose handlers catch ImportError (or ModuleNotFoundError)."""
    guarded = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                handler.type is not None and "ImportError" in ast.unparse(handler.type)
                or handler.type is not None and "ModuleNotFoundError" in ast.unparse(handler.type)
                for handler in node.handlers):
            guarded.extend(node.body)
    return guarded


def _walk_skipping(tree: ast.AST, skipped: set[int]) -> Iterable[ast.AST]:
    stack = [tree]
    while stack:
        node = stack.pop()
        if id(node) in skipped:
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def module_file(name: str, root: Path) -> Path | None:
    """The file of module `name` under `root` (the folder that holds the `pocketlm` package), if it is one."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def reachable(entries: Iterable[Path], root: Path = REPO_ROOT) -> tuple[set[Path], set[str]]:
    """The `pocketlm` module files that `entries` import, directly or not (with the packages that hold them),
    and the top-level names of every other module they import."""
    files: set[Path] = set()
    external: set[str] = set()
    queue = list(entries)
    while queue:
        path = queue.pop()
        for name in imported_modules(path.read_text(encoding="utf-8")):
            top = name.split(".")[0]
            if top != PACKAGE:
                external.add(top)
                continue
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ first
                found = module_file(".".join(parts[:depth]), root)
                if found is not None and found not in files:
                    files.add(found)
                    queue.append(found)
    return files, external


def third_party(top_names: Iterable[str]) -> set[str]:
    """The names that are neither standard library nor pocketlm."""
    return {name for name in top_names if name not in sys.stdlib_module_names and name != PACKAGE and name != "__future__"}


@cache
def locked_versions(lock_file: Path = LOCK_FILE) -> dict[str, tuple[str, str]]:
    """normalised distribution name -> (name as pinned, version), from `requirements-lock.txt`."""
    pins = {}
    for line in lock_file.read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("#")[0].strip().split("==")
            pins[normalise(name)] = (name, version)
    return pins


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def distributions(top_names: Iterable[str]) -> dict[str, str]:
    """Pinned distribution name -> version for each third-party module name; a name that no pinned
    distribution provides is an error naming it."""
    provided = packages_distributions()
    pins = locked_versions()
    found, missing = {}, []
    for name in sorted(third_party(top_names)):
        dists = [normalise(d) for d in provided.get(name, []) if normalise(d) in pins]
        if not dists:
            missing.append(name)
        for dist in dists:
            found[pins[dist][0]] = pins[dist][1]
    if missing:
        raise UnpinnedImportError(f"no pinned distribution in {LOCK_FILE.name} provides: {', '.join(missing)}")
    return found


def imports_of_folder(folder: Path) -> set[str]:
    """Top-level names of every module that any `.py` file under `folder` imports (pocketlm included)."""
    return {name.split(".")[0] for path in sorted(folder.rglob("*.py"))
            for name in imported_modules(path.read_text(encoding="utf-8"))}


def listed_requirements(requirements: str) -> set[str]:
    """Normalised distribution names of a requirements file's `name==version` lines."""
    return {normalise(line.split("==")[0].strip()) for line in requirements.splitlines()
            if "==" in line and not line.lstrip().startswith(("#", "-"))}


def missing_requirements(folder: Path) -> list[str]:
    """Distributions that the code in `folder` imports but its `requirements.txt` does not list (and module
    names no pinned distribution provides, as `UnpinnedImportError`)."""
    listed = listed_requirements((folder / "requirements.txt").read_text(encoding="utf-8"))
    return sorted(name for name in distributions(imports_of_folder(folder)) if normalise(name) not in listed)
