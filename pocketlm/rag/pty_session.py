"""Drive a command in a pseudo-terminal (stdlib `pty`, pexpect-style): the REPL test and the recorded demo.

A pty makes the child believe a person is typing: `input()` reads line by line, Ctrl-C arrives as SIGINT,
Ctrl-D as end of input — which is what the REPL must survive.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import subprocess
import termios
import time

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\r")


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


def _take_terminal() -> None:
    """In the child: a new session whose controlling terminal is the pty, so Ctrl-C there raises SIGINT."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtySession:
    """Start `argv` on a new pty; `expect` text, `sendline` input, `send_control` keys; keep the transcript."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None, columns: int = 100):
        master, slave = pty.openpty()
        env = {**os.environ, **(env or {}), "COLUMNS": str(columns), "LINES": "40", "TERM": "xterm-256color"}
        self.process = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd, close_fds=True, preexec_fn=_take_terminal
        )
        os.close(slave)
        self.fd = master
        self.raw = ""
        """Everything the child wrote, escape codes included (what a terminal would render)."""
        self._seen = 0

    @property
    def text(self) -> str:
        """The transcript as plain text."""
        return strip_ansi(self.raw)

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # the child closed the terminal (Linux reports EIO)
            chunk = b""
        if not chunk:
            raise EOFError("the process closed its terminal")
        self.raw += chunk.decode("utf-8", errors="replace")
        return True

    def expect(self, pattern: str, timeout: float = 60.0) -> str:
        """Wait until `pattern` (a regex) shows up in new output; return the output up to and including it."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            match = regex.search(self.text, self._seen)
            if match:
                seen, self._seen = self._seen, match.end()
                return self.text[seen : match.end()]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{pattern!r} did not appear within {timeout:.0f} s; output so far:\n{self.text[-2000:]}")
            try:
                self._read(min(remaining, 0.5))
            except EOFError:
                if not regex.search(self.text, self._seen):
                    raise EOFError(f"the process ended before {pattern!r} appeared; output:\n{self.text[-2000:]}") from None

    def sendline(self, line: str) -> None:
        os.write(self.fd, (line + "\n").encode())

    def send_control(self, key: str) -> None:
        """Ctrl-<key>: `c` interrupts (SIGINT through the terminal), `d` ends the input."""
        os.write(self.fd, bytes([ord(key.lower()) - ord("a") + 1]))

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the child to exit, draining its output; returns its exit status."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            try:
                self._read(0.2)
            except EOFError:
                break
        return self.process.wait(timeout=max(deadline - time.monotonic(), 0.1))

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        os.close(self.fd)

    def __enter__(self) -> PtySession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
