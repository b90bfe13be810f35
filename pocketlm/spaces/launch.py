"""Start the suite (`spaces/suite/app.py`) or one Space's `app.py` as its own process on a free loopback port and
wait until it serves — for the tests, the suite benchmark and the screenshot script, which all run it the way
a user does.

The same launcher as `pocketlm.serving.launch.running_server` (`running_process`), for an app given by path,
with the time to the first successful request on a route of the caller's choice (`ready_path`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from pocketlm.serving.launch import ServerProcess, free_port, running_process
from pocketlm.settings import REPO_ROOT

SPACES_DIR = REPO_ROOT / "spaces"
SUITE_APP = SPACES_DIR / "suite" / "app.py"


def running_suite(args: Sequence[str] = (), **kwargs):
    """`running_app` for `spaces/suite/app.py`."""
    return running_app(SUITE_APP, args, **kwargs)


@contextmanager
def running_app(
    app: Path,
    args: Sequence[str] = (),
    *,
    ready_path: str = "/health",
    ready_body: bytes | None = None,
    env: Mapping[str, str] | None = None,
    log_path: str | Path | None = None,
    ready_timeout_s: float = 120.0,
) -> Iterator[ServerProcess]:
    """Run the Gradio `app` with `args` on 127.0.0.1 and a free port; `ready_s` is the time from launching the
    process to the first 200 on `ready_path` (POSTing `ready_body` if given). Stopped on exit."""
    port = free_port()
    log_path = log_path or Path(os.environ.get("TMPDIR", "/tmp")) / f"pocketlm-{app.parent.name}-{port}.log"
    command = [sys.executable, str(app), "--host", "127.0.0.1", "--port", str(port), *args]
    with running_process(command, port, ready_path=ready_path, ready_body=ready_body, log_path=log_path,
                         env={"GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}, ready_timeout_s=ready_timeout_s,
                         poll_s=0.02) as server:
        yield server
