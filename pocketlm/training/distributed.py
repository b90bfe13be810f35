"""Launch checks for multi-process runs: refuse a launch that would not distribute as asked, and lock the output folder.

Why this exists: `accelerate launch` (1.15) quietly starts runs that do not do what the command asked.

* `--cpu --num_processes 2` (or a `MULTI_CPU` config) starts **one** process: accelerate starts several CPU
  processes only through MPI (`--mpirun_hostfile`), and says nothing otherwise.
* `--multi_gpu --num_processes 2` on a machine without a GPU starts two processes through torchrun, but
  each one sees no GPU and no `ACCELERATE_USE_CPU`, so `PartialState` picks `DistributedType.NO`: two
  independent runs, each "1 process(es) on cpu", writing the same output folder.
* A config with `use_cpu: true` and `num_processes: 2` goes the torchrun way too, but the launcher does not
  pass `use_cpu` on to the processes, so they end up like the previous case.
* FSDP: accelerate enters FSDP only for GPU-class devices; on the CPU the processes would fall back to
  plain data parallelism (gloo) while the user asked for sharding.

`check_launch()` re-reads the `accelerate launch` command that started this process with accelerate's own
parser (nothing else records what was asked: the launcher passes no config path or `use_cpu` to its
children), compares it with what this process got, and either raises `LaunchError` with the command to
use instead or, for the CPU multi-process config, sets `ACCELERATE_USE_CPU` so accelerate (and the
`Trainer`) initialise gloo over the processes torchrun started.

`OutputDirLock` makes two runs on one output folder impossible: the main process holds an exclusive
`fcntl.flock` on `<output_dir>/.pocketlm-run.lock` for the whole run (the kernel drops it when the process
dies, so a crash leaves no stale lock), and a second run fails at once naming the holder.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pocketlm.errors import ConfigError

LOCK_FILE = ".pocketlm-run.lock"
CPU_MULTIPROCESS_CONFIG = "accelerate_configs/cpu_multiprocess.yaml"
GPU_DDP_CONFIG = "accelerate_configs/multi_gpu_ddp.yaml"


class LaunchError(ConfigError):
    """The launch cannot run as asked (processes, devices or sharding); the message says what to run instead."""


class OutputDirBusy(ConfigError):
    """Another run holds the output folder's lock."""


@dataclass(frozen=True)
class LaunchRequest:
    """What the `accelerate launch` command asked for (after its config file and defaults are applied)."""

    num_processes: int
    use_cpu: bool
    use_fsdp: bool
    multi_gpu: bool
    config_file: str | None


def _accelerate_launch_args(cmdline: list[str]) -> list[str] | None:
    """The arguments after `launch` in an `accelerate launch ...`, `accelerate-launch ...` or
    `python -m accelerate.commands.launch ...` command line; None for any other command."""
    for i, token in enumerate(cmdline):
        name = Path(token).name
        if name == "accelerate" and i + 1 < len(cmdline) and cmdline[i + 1] == "launch":
            return cmdline[i + 2 :]
        if name == "accelerate-launch" or token == "accelerate.commands.launch":
            return cmdline[i + 1 :]
    return None


def parse_launch_command(cmdline: list[str]) -> LaunchRequest | None:
    """Resolve an `accelerate launch` command line the way the launcher does (its own parser and validation)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    launch_args = _accelerate_launch_args(cmdline)
    if launch_args is None:
        return None
    args = launch_command_parser().parse_args(launch_args)
    # The launcher already printed its defaults warnings; re-validating here must not print them again.
    launch_logger = logging.getLogger("accelerate.commands.launch")
    level = launch_logger.level
    launch_logger.setLevel(logging.ERROR)
    try:
        args, _, _ = _validate_launch_command(args)
    finally:
        launch_logger.setLevel(level)
    return LaunchRequest(
        num_processes=int(args.num_processes or 1),
        use_cpu=bool(args.cpu or getattr(args, "use_cpu", False)),
        use_fsdp=bool(args.use_fsdp),
        multi_gpu=bool(args.multi_gpu),
        config_file=args.config_file,
    )


def launching_command() -> list[str]:
    """The command line of the process that started this one (the `accelerate launch` process, for both
    its torchrun and its single-process launcher)."""
    import psutil

    try:
        return psutil.Process().parent().cmdline()
    except (psutil.Error, AttributeError):
        return []


def _gpu_count() -> int:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count()
    return torch.xpu.device_count() if hasattr(torch, "xpu") and torch.xpu.is_available() else 0


def check_launch(request: LaunchRequest | None = None, environ=None, gpus: int | None = None) -> int:
    """Refuse a launch that would not distribute as asked; returns the number of processes that will train.

    Call it first thing in a training script, before any `Accelerator`, `PartialState` or
    `TrainingArguments` device setup. `request` defaults to the launching `accelerate launch` command
    (None when started otherwise, e.g. by `python` or `torchrun`); `gpus` to the GPUs this process sees.
    """
    environ = os.environ if environ is None else environ
    if request is None:
        request = parse_launch_command(launching_command())
    world = int(environ.get("WORLD_SIZE", "1"))
    asked = request.num_processes if request else world
    if asked > 1 and world == 1:
        raise LaunchError(
            f"accelerate launch was asked for {asked} processes but started one: on the CPU it starts several "
            f"processes only through MPI (--mpirun_hostfile). For {asked} processes on the CPU (gloo), launch with "
            f"--config_file {CPU_MULTIPROCESS_CONFIG} --num_processes {asked}"
        )
    if world == 1:
        return 1
    gpus = _gpu_count() if gpus is None else gpus
    fsdp = environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" or bool(request and request.use_fsdp)
    cpu = environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes") or bool(request and request.use_cpu)
    if fsdp and (cpu or not gpus):
        raise LaunchError(
            f"FSDP was asked for {world} processes on the CPU, but accelerate shards only on GPUs: on the CPU the "
            f"processes would run plain data parallelism instead. Use --config_file {CPU_MULTIPROCESS_CONFIG} "
            "(DDP over gloo) here, and the FSDP config on a GPU machine"
        )
    if cpu:
        # The launcher does not pass `use_cpu` to torchrun's processes; without this they would not join one group.
        environ["ACCELERATE_USE_CPU"] = "true"
        return world
    if not gpus:
        raise LaunchError(
            f"{world} processes were started for GPUs (--multi_gpu / {Path(GPU_DDP_CONFIG).name}), but this machine "
            f"has none: each process would train alone on the CPU and all would write one output folder. For "
            f"{world} processes on the CPU, launch with --config_file {CPU_MULTIPROCESS_CONFIG} --num_processes {world}"
        )
    local = int(environ.get("LOCAL_WORLD_SIZE", world))
    if local > gpus:
        # accelerate puts process i on GPU i: the extra processes would fail on a device that does not exist, and
        # NCCL refuses two processes on one GPU anyway (docs/scaling.md quotes its error).
        raise LaunchError(
            f"{local} processes were started on this machine, but it has {gpus} GPU(s): data parallelism over NCCL "
            f"runs one process per GPU. Launch with --num_processes {gpus}, or with --config_file "
            f"{CPU_MULTIPROCESS_CONFIG} for {local} processes on the CPU"
        )
    return world


def is_main_launch_process(environ=None) -> bool:
    """Rank 0 of the launch (torchrun's global RANK), or a process started without a launcher."""
    environ = os.environ if environ is None else environ
    return int(environ.get("RANK", "0")) == 0


def process_state():
    """This process's accelerate `PartialState`: its rank in an `accelerate launch` group (over gloo with the
    CPU config: `check_launch` sets `ACCELERATE_USE_CPU`, which a bare `PartialState()` ignores and would leave
    every process believing it is alone), or a one-process state when started by `python`."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


class OutputDirLock:
    """Hold an exclusive lock on `output_dir` for a run (main process only); a second run raises `OutputDirBusy`.

    Used as a context manager around the whole run. The other ranks of the same launch do not lock:
    they are the same run, and torchrun ends them when the main process exits with this error.
    """

    def __init__(self, output_dir: str | Path, environ=None):
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / LOCK_FILE
        self.environ = os.environ if environ is None else environ
        self._file = None

    def __enter__(self) -> OutputDirLock:
        if not is_main_launch_process(self.environ):
            return self
        self.output_dir.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            raise OutputDirBusy(f"{self.output_dir} is in use by another run ({describe_holder(holder)}); wait for "
                                "it to finish or pass another --output_dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}))
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def describe_holder(text: str) -> str:
    """'pid 123 on host, since 2025-01-01 12:00:00: <command>' from the lock file's JSON (or what it holds)."""
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']}, since {holder['started']}: {holder['command']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


def mean_over_processes(accelerator, loss) -> float:
    """The batch loss averaged over all processes (what the optimizer step follows under DDP), as a float.

    Without it a data-parallel run logs only the main process's share of each batch. Equal shares hold
    for pretraining's full-length chunks; one scalar all-reduce per batch is negligible next to the step.
    """
    if accelerator.num_processes == 1:
        return loss.item()
    return accelerator.reduce(loss.detach(), reduction="mean").item()


def main() -> int:
    """`accelerate launch --config_file X -m pocketlm.training.distributed`: check a config before a long run.

    Runs the same check as the training scripts, joins the process group, and prints what each process got
    (an all-reduce of ones proves the processes really form one group).
    """
    import torch
    from accelerate import Accelerator

    check_launch()
    accelerator = Accelerator()
    total = accelerator.reduce(torch.ones(1, device=accelerator.device), reduction="sum").item()
    line = (f"process {accelerator.process_index}/{accelerator.num_processes}: {accelerator.distributed_type.value} "
            f"on {accelerator.device}, backend {accelerator.state.backend}, all-reduce of ones = {total:g}\n")
    sys.stdout.write(line)  # one write (print writes the newline apart): the processes share the output pipe
    sys.stdout.flush()
    # Leave the group before exiting: a gloo group still alive at interpreter teardown can abort the process
    # ("terminate called without an active exception") after the check itself succeeded.
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    from pocketlm.cli import run

    run(main)
