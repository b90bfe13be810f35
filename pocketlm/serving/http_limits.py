"""The request-level limits of `Limits` that no library setting covers: body size and read timeouts.

* **Body size.** `BodyLimits` answers 413 to a `Content-Length` over the cap without reading a byte, and
  stops a body sent without one (chunked) as soon as the bytes received pass the cap — before anything
  parses it. Hand-written rather than FastAPI's `max_body_size` (Starlette's `RequestBodyLimitMiddleware`):
  that one replaces the app's response with a plain-text 413 whenever `Content-Length` is over the cap, and
  every refusal of this API is JSON.
* **Body time.** `BodyLimits` also answers 408 when the whole body has not arrived within `read_timeout_s`
  of the app's first read of it.
* **Headers.** uvicorn's only timer is `timeout_keep_alive`, armed after a response and cancelled by any
  byte received; a client that trickles its request headers (slowloris) holds the connection forever.
  `header_timeout_protocol` closes a connection whose next request's headers are not complete within
  `read_timeout_s` of the connection opening or the previous response ending.
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


class BodyRefused(HTTPException):
    """Raised from `receive` when the body is too large or too late. An `HTTPException`, so FastAPI's body
    reading re-raises it as it is (anything else becomes a 400 there) and the app's handler renders it."""


def too_large(max_bytes: int) -> BodyRefused:
    return BodyRefused(413, f"request body larger than {max_bytes} bytes")


class BodyLimits:
    """ASGI middleware: a request body may have at most `max_bytes` and must arrive within `timeout_s` of
    the app's first read of it; else 413 or 408, as short JSON, before the body is parsed.

    Once the last chunk is in, `receive` is passed through untouched (a streaming response waits on it for
    the client's disconnect, for as long as the stream lasts).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(too_large(self.max_bytes), scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        received = 0
        body_done = False
        started = False

        async def limited_receive() -> Message:
            nonlocal deadline, received, body_done
            if body_done:
                return await receive()
            deadline = deadline or loop.time() + self.timeout_s
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyRefused(408, f"request body not received within {self.timeout_s:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise too_large(self.max_bytes)
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except BodyRefused as err:  # not rendered inside (a mounted app, a route that reads the body itself)
            if started:
                raise
            await self._refuse(err, scope, receive, send)

    @staticmethod
    async def _refuse(err: BodyRefused, scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse({"detail": err.detail}, err.status_code)(scope, receive, send)


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


def server_config(app: ASGIApp, host: str, port: int, limits: Limits | None = None, **kwargs: Any) -> uvicorn.Config:
    """The uvicorn settings of both servers (REST API and the Spaces suite): the header timeout, keep-alive,
    a connection cap; `kwargs` go to `uvicorn.Config` as they are (log level...)."""
    import uvicorn

    limits = limits or Limits()
    # ws="none": the API streams with server-sent events, so uvicorn need not import a websockets stack
    return uvicorn.Config(
        app, host=host, port=port, http=header_timeout_protocol(limits.read_timeout_s), ws="none",
        timeout_keep_alive=limits.keep_alive_s, limit_concurrency=limits.max_connections, **kwargs,
    )
