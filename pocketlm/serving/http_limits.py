"""Read timeouts for slow clients, and the uvicorn settings that go with `Limits`.

The body-size cap needs nothing here: FastAPI's `max_body_size` (Starlette's `RequestBodyLimitMiddleware`)
counts `Content-Length` and the streamed bytes and answers 413 before the body is parsed. Two timeouts
have no library setting, so they are written here:

* **Headers.** uvicorn's only timer is `timeout_keep_alive`, armed after a response and cancelled by any
  byte received; a client that trickles its request headers (slowloris) holds the connection forever.
  `HeaderTimeoutH11Protocol` closes a connection whose next request's headers are not complete within
  `read_timeout_s` of the connection opening or the previous response ending.
* **Body.** Once the headers are in, the app reads the body through ASGI `receive`; `BodyReadTimeout`
  answers 408 when the whole body has not arrived within `read_timeout_s` of the first read.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pocketlm.serving.admission import Limits

if TYPE_CHECKING:
    import uvicorn


class BodyTimeout(HTTPException):
    """Raised from `receive` when the body is late. An `HTTPException`, so FastAPI's body reading re-raises
    it as it is (anything else becomes a 400 there) and the app's handler renders it."""

    def __init__(self, seconds: float):
        super().__init__(408, f"request body not received within {seconds:g} s")


class BodyReadTimeout:
    """ASGI middleware: the request body must arrive within `seconds` of the app's first read of it.

    Only reads of the body are timed: once the last chunk is in, `receive` is passed through untouched (a
    streaming response waits on it for the client's disconnect, for as long as the stream lasts).
    """

    def __init__(self, app: ASGIApp, seconds: float):
        self.app, self.seconds = app, seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        body_done = False
        started = False

        async def timed_receive() -> Message:
            nonlocal deadline, body_done
            if body_done:
                return await receive()
            deadline = deadline or loop.time() + self.seconds
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout(self.seconds) from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, timed_receive, tracked_send)
        except BodyTimeout as err:  # not rendered inside (a mounted app, a route that streams the body itself)
            if started:
                raise
            await JSONResponse({"detail": err.detail}, err.status_code, headers={"Connection": "close"})(scope, receive, send)


def header_timeout_protocol(seconds: float) -> type:
    """uvicorn's h11 protocol class with a deadline on request headers (see the module docstring)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11Protocol(H11Protocol):
        header_timeout_s = seconds

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_timer()

        def on_response_complete(self) -> None:
            # Armed before uvicorn starts the next cycle: a pipelined request it handles right away already
            # counts as a new cycle when the timer fires.
            self._arm_header_timer()
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_overdue, self.cycle)

        def _cancel_header_timer(self) -> None:
            timer = getattr(self, "_header_timer", None)
            if timer is not None:
                timer.cancel()

        def _headers_overdue(self, cycle_when_armed: Any) -> None:
            if self.cycle is cycle_when_armed and not self.transport.is_closing():  # no new request began
                self.transport.close()

    return HeaderTimeoutH11Protocol


def server_config(app: ASGIApp, host: str, port: int, limits: Limits | None = None, **kwargs: Any) -> "uvicorn.Config":
    """The uvicorn settings of both servers (REST API and the Spaces suite): the header timeout, keep-alive,
    a connection cap; `kwargs` go to `uvicorn.Config` as they are (log level...)."""
    import uvicorn

    limits = limits or Limits()
    # ws="none": the API streams with server-sent events, so uvicorn need not import a websockets stack
    return uvicorn.Config(
        app, host=host, port=port, http=header_timeout_protocol(limits.read_timeout_s), ws="none",
        timeout_keep_alive=limits.keep_alive_s, limit_concurrency=limits.max_connections, **kwargs,
    )
