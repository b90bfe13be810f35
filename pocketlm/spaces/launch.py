"""Start the suite (`spaces/suite/app.py`) or one Space's `app.py` as its own process on a free loopback port and
wait until it serves — for the tests, the suite benchmark and the screenshot script, which all run it the way
a user does.

Like `pocketlm.serving.launch.running_server` (whose port picking it reuses), but for a command given by
path, with the time to the first successful request on a route of the caller's choice (`ready_path`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from pocketlm.serving.launch import ServerProcess, free_port
from pocketlm.settings import REPO_ROOT

SPACES_DIR = REPO_ROOT / "spaces"
SUITE_APP = SPACES_DIR / "suite" / "app.py"


def request_ok(url: str, body: bytes | None = None, timeout: float = 5.0) -> bool:
    """True when `url` answers 200 (a POST of JSON `body` when given); False while nothing listens yet."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


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
    log_path = Path(log_path) if log_path else Path(os.environ.get("TMPDIR", "/tmp")) / f"pocketlm-{app.parent.name}-{port}.log"
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath, "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
    command = [sys.executable, str(app), "--host", "127.0.0.1", "--port", str(port), *args]
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
    base_url = f"http://127.0.0.1:{port}"
    try:
        while not request_ok(base_url + ready_path, ready_body):
            if process.poll() is not None:
                raise RuntimeError(f"{app} exited with {process.returncode}: {log_path.read_text()[-3000:]}")
            if time.perf_counter() - started > ready_timeout_s:
                raise TimeoutError(f"{app} not ready after {ready_timeout_s} s: {log_path.read_text()[-3000:]}")
            time.sleep(0.02)
        yield ServerProcess(process, base_url, time.perf_counter() - started, log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
