"""Serve an ASGI app on a free loopback port from a thread of the test process, with the command line's uvicorn
settings (`server_config`): tests can then read the app's state and swap its model for a test double. Also the one
reader of a server-sent-event stream the serving tests share."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

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
