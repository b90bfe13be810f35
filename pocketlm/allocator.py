"""Train on tcmalloc: on the CPU, the memory allocator decides a good part of a training step's speed.

A training step allocates its activations and gradients (megabytes each; the full logits of the tiny LM are
131 MB) and frees them all by the step's end. glibc's malloc hands such blocks back to the kernel
(`munmap`, heap trimming), so every step page-faults the same memory in again, and the ops that first write
it pay for that. tcmalloc keeps freed memory for reuse: the `Trainer` pretraining the tiny LM took a fifth of
the page faults and ran up to 1.4× faster on it (`benchmarks/pretrain_throughput.py` runs the fastest variants
on both allocators; docs/pretraining.md#the-allocator). PyTorch's CPU tuning guide and its
`torch.backends.xeon.run_cpu` launcher recommend the same.

An allocator has to be chosen before the process starts (`LD_PRELOAD`), so a training script runs itself
again, once, with tcmalloc preloaded: `relaunch_on_tcmalloc`, called by `pocketlm.cli.run(main, tcmalloc=True)`
before the script's `main`. The library never does this on import: only a script may choose its process's
malloc. Nothing changes where tcmalloc is not installed (`apt install libtcmalloc-minimal4`; `make` installs
it where it can) or where `POCKETLM_ALLOCATOR=system`.
"""

from __future__ import annotations

import ctypes.util
import glob
import os
import sys
from pathlib import Path

from pocketlm.errors import ConfigError

ENV = "POCKETLM_ALLOCATOR"
"""`auto` (the default: tcmalloc when installed), `system` (the C library's malloc), or a tcmalloc library's path."""
_RELAUNCHED = "POCKETLM_ALLOCATOR_RELAUNCHED"  # set in the relaunched process: never exec twice


def loaded_allocator() -> str:
    """The malloc this process runs on: `tcmalloc`, `jemalloc` or `system`."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux
        return "system"
    for name in ("tcmalloc", "jemalloc"):
        if f"lib{name}" in maps:
            return name
    return "system"


def find_tcmalloc() -> str | None:
    """tcmalloc's shared library, if installed: the system's (ldconfig's cache) or this Python prefix's (conda)."""
    for name in ("tcmalloc_minimal", "tcmalloc"):
        found = ctypes.util.find_library(name)
        if found:
            return found  # a soname ("libtcmalloc_minimal.so.4"): ld.so resolves it for LD_PRELOAD like a link
    for prefix in {sys.prefix, sys.base_prefix}:
        candidates = sorted(glob.glob(os.path.join(prefix, "lib", "libtcmalloc*.so*")))
        if candidates:
            return candidates[0]
    return None


def chosen_library(environ=os.environ) -> str | None:
    """The library `POCKETLM_ALLOCATOR` asks for: None for the system allocator or no tcmalloc installed."""
    choice = environ.get(ENV, "auto").strip() or "auto"
    if choice == "system":
        return None
    if choice == "auto":
        return find_tcmalloc()
    if not Path(choice).is_file():
        raise ConfigError(f"{ENV}={choice!r}: expected 'auto', 'system' or the path of a tcmalloc library")
    return choice


def with_allocator(environ, library: str | None) -> dict[str, str]:
    """A copy of `environ` for a child process on `library` (preloaded) or, with None, on the system allocator."""
    env = dict(environ)
    kept = [entry for entry in env.get("LD_PRELOAD", "").split() if "malloc" not in entry]
    if library is None:
        env[ENV] = "system"
    else:
        kept.insert(0, library)
        # tcmalloc reports every allocation over 1 GB on stderr by default; a long run's logs need none of that
        env.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))
    if kept:
        env["LD_PRELOAD"] = " ".join(kept)
    else:
        env.pop("LD_PRELOAD", None)
    return env


def relaunch_on_tcmalloc() -> None:
    """Run this same command again with tcmalloc preloaded, unless it already is, is not installed, or
    `POCKETLM_ALLOCATOR=system`. Keeps the process id (exec), so launchers such as `accelerate launch` that
    watch it see no difference. Returns (and the caller goes on) whenever it does not exec."""
    if sys.platform != "linux" or os.environ.get(_RELAUNCHED) or loaded_allocator() != "system":
        return
    if not reruns_this_program(sys.orig_argv, sys.argv):
        return
    library = chosen_library()
    if library is None:
        return
    env = with_allocator(os.environ, library)
    env[_RELAUNCHED] = "1"  # if the preload fails (ld.so warns and goes on), the second process must not exec again
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def reruns_this_program(orig_argv: list[str], argv: list[str]) -> bool:
    """Whether starting the interpreter again with `orig_argv` would run the program that set `argv`, with the
    same arguments: `python [options] script args` or `python [options] -m module args`. Not when the script was
    run some other way — `runpy` from a test or a notebook (the interpreter's command is pytest's, and rerunning
    it would start the whole test session again), `-c`, or a program read from stdin, which cannot be read twice.
    """
    count = len(argv)
    program_at = len(orig_argv) - count  # where the program stands in the interpreter's own command line
    if program_at < 1 or orig_argv[program_at + 1:] != argv[1:]:
        return False
    program = orig_argv[program_at]
    if orig_argv[program_at - 1] == "-m":  # argv[0] is then the module's file
        module_path = os.path.join(*program.split("."))
        return argv[0].endswith((module_path + ".py", os.path.join(module_path, "__main__.py")))
    return program not in ("-", "-c") and os.path.realpath(program) == os.path.realpath(argv[0])
