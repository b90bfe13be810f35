"""Test driver: pretraining as `training_scripts/pretrain.py` runs it, plus what the distributed tests need to see.

Launched by tests/test_distributed.py with `accelerate launch --config_file accelerate_configs/cpu_multiprocess.yaml`
(or in-process for the one-process reference), and by tests/test_gpu.py with the GPU configs. It records, in
`--record_dir`:

* `losses.json`: the loss of every optimizer step (the loop logs every step here, averaged over processes);
* `logits.pt`-free `logits.json`: the in-memory model's logits on fixed inputs at the end of training;
* `writes-rank<N>.json`: every file this process opened for writing under the output folder or the hub
  (an audit hook on `open`), to show that only the main process writes.

`--stop_after_step K` ends every process right after step K's checkpoint, as a kill would.
`--delay_other_ranks_save_s S` makes every process but the main one write its part of a checkpoint S seconds late,
as a loaded host may: the main process must not swap the checkpoint in before they are done.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from transformers import TrainerCallback


class Recorder(TrainerCallback):
    """A callback: per-step losses, the in-memory model's logits at the end, and an early stop."""

    def __init__(self, record_dir: Path, stop_after_step: int, probe_ids: list[list[int]], is_main: bool):
        self.record_dir, self.stop_after_step, self.probe_ids, self.is_main = record_dir, stop_after_step, probe_ids, is_main
        self.losses: dict[int, float] = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses[state.global_step] = logs["loss"]

    def on_step_end(self, args, state, control, **kwargs):
        # The loop checkpoints after this event: stopping at step K+1's event leaves step K's checkpoint whole.
        if self.stop_after_step and state.global_step == self.stop_after_step + 1:
            self._dump()
            sys.stdout.flush()
            os._exit(0)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        import torch

        device = next(model.parameters()).device  # the GPU in tests/test_gpu.py
        with torch.no_grad():
            logits = model(torch.tensor(self.probe_ids, device=device))["logits"]
        self._dump(logits=logits.float().cpu().tolist())

    def _dump(self, **extra):
        if self.is_main:
            (self.record_dir / "losses.json").write_text(json.dumps({"losses": self.losses, **extra}))


def audit_writes(roots: list[Path], log: list[str]):
    """Record files opened for writing under `roots` (Python-level opens: json, torch.save, shutil, pickle)."""
    roots = [str(r.resolve()) for r in roots]

    def hook(event, args):
        if event == "open" and args and isinstance(args[0], (str, os.PathLike)):
            mode, flags = args[1], args[2] if len(args) > 2 else 0
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            path = os.path.abspath(os.fspath(args[0]))
            if writing and any(path.startswith(root) for root in roots):
                log.append(path)

    sys.addaudithook(hook)


def delay_other_ranks_save(seconds: float) -> None:
    """Wrap accelerate's writing of one process's checkpoint files (after `save_state` made the folder) in a delay."""
    import time

    import accelerate.accelerator

    write = accelerate.accelerator.save_accelerator_state

    def late_write(*args, **kwargs):
        time.sleep(seconds)
        return write(*args, **kwargs)

    accelerate.accelerator.save_accelerator_state = late_write


def run(argv: list[str]) -> None:
    import argparse

    from pocketlm.training.distributed import OutputDirLock, check_launch, is_main_launch_process
    from pocketlm.training.pretrain import PretrainArguments, publish_best, train

    parser = argparse.ArgumentParser()
    parser.add_argument("--record_dir", required=True)
    parser.add_argument("--stop_after_step", type=int, default=0)
    parser.add_argument("--delay_other_ranks_save_s", type=float, default=0.0)
    own, rest = parser.parse_known_args(argv)
    record_dir = Path(own.record_dir)
    check_launch()
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser([PretrainArguments]).parse_args_into_dataclasses(rest)
    rank = int(os.environ.get("RANK", "0"))
    if own.delay_other_ranks_save_s and rank != 0:
        delay_other_ranks_save(own.delay_other_ranks_save_s)
    writes: list[str] = []
    audit_writes([args.output_path, Path(os.environ["POCKETLM_HUB_DIR"])], writes)
    probe = json.loads((args.data_path / "validation.jsonl").read_text().splitlines()[0])["input_ids"]
    recorder = Recorder(record_dir, own.stop_after_step, [probe[:16], probe[16:32]], is_main_launch_process())
    try:
        with OutputDirLock(args.output_path):
            result = train(args, callbacks=[recorder], log=lambda *a: None)
            if is_main_launch_process() and args.publish:
                publish_best(args, result)
    finally:
        (record_dir / f"writes-rank{rank}.json").write_text(json.dumps(sorted(set(writes))))


if __name__ == "__main__":
    run(sys.argv[1:])
