"""Command-line plumbing shared by every script: dataclass arguments with presets, one-line errors.

Scripts stay thin: they declare their arguments as dataclasses (transformers' `HfArgumentParser`) and
named presets of defaults, then hand their `main` to `run`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pocketlm.errors import PocketLMError


def parse_args_with_presets(
    dataclass_types: Iterable[type],
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    default_preset: str | None = None,
    args: list[str] | None = None,
    description: str | None = None,
) -> tuple[Any, ...]:
    """Parse `args` into one instance per dataclass; `--preset NAME` sets defaults that explicit flags override.

    An unknown preset or flag exits with argparse's one-line usage error naming it.
    """
    from transformers import HfArgumentParser

    presets = dict(presets or {})
    parser = HfArgumentParser(list(dataclass_types), description=description)
    if presets:
        parser.add_argument(
            "--preset", choices=sorted(presets), default=default_preset,
            help=f"named defaults ({', '.join(presets)}); explicit flags override them (default: {default_preset})",
        )
        known, _ = parser.parse_known_args(args)
        values = presets[known.preset] if known.preset else {}
        unknown_fields = set(values) - {action.dest for action in parser._actions}
        if unknown_fields:  # a bug in the script's preset table, not user input
            raise KeyError(f"preset {known.preset!r} sets unknown fields: {sorted(unknown_fields)}")
        parser.set_defaults(**values)
    *outputs, remaining = parser.parse_args_into_dataclasses(args, return_remaining_strings=True)
    if remaining:
        parser.error(f"unrecognized arguments: {' '.join(remaining)}")
    # HfArgumentParser returns the non-dataclass arguments (here --preset) as a trailing Namespace.
    return tuple(o for o in outputs if type(o).__name__ != "Namespace")


def run(main: Callable[[], int | None], tcmalloc: bool = False) -> None:
    """Call `main` and exit: user errors print `error: <message>` (status 2), Ctrl-C exits quietly (130).

    With `tcmalloc` (the training scripts), first run the command again on tcmalloc where it is installed:
    a CPU training step runs faster on it (`pocketlm.allocator` says why and by how much).
    """
    try:
        if tcmalloc:
            from pocketlm.allocator import relaunch_on_tcmalloc

            relaunch_on_tcmalloc()
        status = main()
    except PocketLMError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)
