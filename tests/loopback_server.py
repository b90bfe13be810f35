"""Serve an ASGI app on a free loopback port from a thread of the test process, with the command line's uvicorn
settings (`server_config`): tests can then read the app's state and swap its model for a test double (`slowed`).
Also the one reader of a server-sent-event stream the serving tests share."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from pocketlm.serving.admission import Limits
from pocketlm.serving.launch import free_port


@contextmanager
def serving(app, limits: Limits) -> Iterator[str]:
    """Serve `app` on a free loopback port with the command line's uvicorn settings; yield its base URL."""
    import uvicorn

    from pocketlm.serving.http_limits import server_config

    port = free_port()
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, limits, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def server_sent_events(response) -> Iterator[tuple[str, str, float]]:
    """(event name, data text, arrival time) of each event of an SSE `httpx` response, as it arrives."""
    name = "message"
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            yield name, line[len("data: "):], time.perf_counter()
            name = "message"


class SlowSession:
    """Test double for the LM's ONNX Runtime session: each graph call first sleeps `delay_s`, so a generation
    lasts long enough for a test to act on it midway. `hold_after_prefill()` lets calls through until the next
    prefill (a call over more than one position) has run, then holds every call after it until `release()`:
    the request that prefill began is certainly still running, however slow the host.

    (Anchored on the prefill rather than on a count of calls: the continuous batch may still be running a
    decoding step for a request whose client has just read its last token, and a count would be spent on it.)"""

    def __init__(self, real, delay_s: float, log: list | None = None):
        self._real, self.delay_s, self.log = real, delay_s, log
        self._hold = "off"  # "off" -> "until prefill" -> "holding" -> ("off" on release)
        self._released = threading.Event()

    def __getattr__(self, name):
        return getattr(self._real, name)

    def hold_after_prefill(self) -> None:
        self._released.clear()
        self._hold = "until prefill"

    def release(self) -> None:
        self._hold = "off"
        self._released.set()

    def run(self, output_names, feed):
        if self.log is not None:
            self.log.append("step")
        if self._hold == "holding":
            assert self._released.wait(30), "a held graph call was never released"
        elif self._hold == "until prefill" and feed["input_ids"].shape[1] > 1:
            self._hold = "holding"
        time.sleep(self.delay_s)
        return self._real.run(output_names, feed)


def slowed(served, delay_s: float, log: list | None = None):
    runtime = copy.copy(served.runtime)
    runtime.session = SlowSession(served.runtime.session, delay_s, log)
    return replace(served, runtime=runtime)
