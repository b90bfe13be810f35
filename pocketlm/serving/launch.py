"""Start `python -m pocketlm.serving` as a separate process and wait until it answers — for tests and benchmarks.

Both measure the server the way a user runs it: a fresh interpreter, real sockets on 127.0.0.1. The time
from launching the process to its first 200 on `/health` is recorded as `ready_s` (the start-up target).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pocketlm.settings import REPO_ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    process: subprocess.Popen
    base_url: str
    ready_s: float
    """Seconds from process launch to the first 200 on /health."""
    log_path: Path


def request_ok(url: str, body: bytes | None = None, timeout: float = 5.0) -> bool:
    """True when `url` answers 200 (a POST of JSON `body` when given); False while nothing listens yet."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextmanager
def running_process(
    command: Sequence[str],
    port: int,
    *,
    ready_path: str = "/health",
    ready_body: bytes | None = None,
    env: Mapping[str, str] | None = None,
    log_path: str | Path,
    ready_timeout_s: float = 60.0,
    poll_s: float = 0.005,
    cwd: str | Path | None = None,
    base_env: Mapping[str, str] | None = None,
) -> Iterator[ServerProcess]:
    """Run `command` (a server listening on 127.0.0.1:`port`) until the first 200 on `ready_path`; yield it with
    the time that took; stop it on exit (SIGTERM, then SIGKILL).

    It runs in the checkout with this process's environment and the checkout on `PYTHONPATH`, plus `env`; a
    program that must not see the checkout (a staged Space in its own venv) gives `cwd` and `base_env`, the
    environment to start from instead.

    Its output goes to `log_path`, never to a pipe nobody reads, which would block the server once the pipe
    buffer filled; the log's tail is in the error if it exits or is not ready in time.
    """
    log_path = Path(log_path)
    name = command[2] if command[1] == "-m" else command[1]  # the module or script, for the errors below
    if base_env is None:
        pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        base_env = {**os.environ, "PYTHONPATH": pythonpath}
    env = {**base_env, **(env or {})}
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, cwd=cwd or REPO_ROOT, env=env)
    base_url = f"http://127.0.0.1:{port}"
    try:
        while not request_ok(base_url + ready_path, ready_body, timeout=1 if ready_body is None else 5):
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}: {log_path.read_text()[-3000:]}")
            if time.perf_counter() - started > ready_timeout_s:
                raise TimeoutError(f"{name} not ready after {ready_timeout_s} s: {log_path.read_text()[-3000:]}")
            time.sleep(poll_s)
        yield ServerProcess(process, base_url, time.perf_counter() - started, log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def running_server(args: Sequence[str] = (), log_path: str | Path | None = None, ready_timeout_s: float = 60.0) -> Iterator[ServerProcess]:
    """Run `python -m pocketlm.serving` with extra CLI `args` on a free loopback port (log: a temporary file by
    default); `ready_s` is launch → first 200 on /health."""
    port = free_port()
    log_path = log_path or Path(os.environ.get("TMPDIR", "/tmp")) / f"pocketlm-serving-{port}.log"
    command = [sys.executable, "-m", "pocketlm.serving", "--host", "127.0.0.1", "--port", str(port), *args]
    with running_process(command, port, log_path=log_path, ready_timeout_s=ready_timeout_s) as server:
        yield server
