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
from collections.abc import Iterator, Sequence
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


def _health_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextmanager
def running_server(args: Sequence[str] = (), log_path: str | Path | None = None, ready_timeout_s: float = 60.0) -> Iterator[ServerProcess]:
    """Run the server with extra CLI `args` on a free loopback port; stop it (SIGTERM, then SIGKILL) on exit.

    Its output goes to `log_path` (a temporary file by default), never to a pipe nobody reads, which would
    block the server once the pipe buffer filled.
    """
    port = free_port()
    log_path = Path(log_path) if log_path else Path(os.environ.get("TMPDIR", "/tmp")) / f"pocketlm-serving-{port}.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "pocketlm.serving", "--host", "127.0.0.1", "--port", str(port), *args]
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
    base_url = f"http://127.0.0.1:{port}"
    try:
        while not _health_ok(f"{base_url}/health"):
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}: {Path(log_path).read_text()[-2000:]}")
            if time.perf_counter() - started > ready_timeout_s:
                raise TimeoutError(f"server not ready after {ready_timeout_s} s: {Path(log_path).read_text()[-2000:]}")
            time.sleep(0.005)
        yield ServerProcess(process, base_url, time.perf_counter() - started, log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
