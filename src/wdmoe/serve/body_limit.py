"""Request bodies beyond a size are refused with 413 before they are read (an ASGI middleware).

Why: a 30 MB prompt was read, parsed and tokenized before any length check, and froze the server for 76 s. A
declared Content-Length over the limit is answered at once without reading the body; a chunked body is counted as it
arrives and cut at the limit. The rest of a refused body is read and dropped (never stored), so the client gets the
413 instead of a reset connection.
"""

from __future__ import annotations

import json
from typing import Any

from wdmoe.serve.responses import error_body

DRAIN_MAX_BYTES = 256 * 2**20  # read (and drop) at most this much of a refused body before answering
Scope = dict[str, Any]
Message = dict[str, Any]


class BodyLimit:
    """ASGI middleware: at most `max_bytes` of request body per HTTP request."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length")
        # A client that asked "Expect: 100-continue" (curl does for large bodies) has not sent the body: answer at once.
        waiting = headers.get(b"expect", b"").lower() == b"100-continue"
        if declared is not None:
            try:
                too_large = int(declared) > self.max_bytes
            except ValueError:
                await _error(send, 400, f"Content-Length {declared.decode(errors='replace')!r} is not a number")
                return
            if too_large:
                await self._refuse(receive, send, int(declared), drain=not waiting)
                return
        received, started, over, body_done = 0, False, False, False

        async def counted() -> Message:
            nonlocal received, over, body_done
            if over:
                return {"type": "http.disconnect"}
            message: Message = await receive()
            if message["type"] == "http.request":
                body_done = not message.get("more_body", False)
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # The app sees the client go away (frameworks turn their own errors into 400s: whatever it
                    # answers is replaced by our 413 below).
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            if over:
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await self._refuse(receive, send, received, drain=not body_done)
                return  # the app's own answer to the cut body is dropped
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except Exception:
            if not over:
                raise
        if over and not started:
            await self._refuse(receive, send, received, drain=not body_done)

    async def _refuse(self, receive: Any, send: Any, size: int, drain: bool) -> None:
        if drain:
            await _drain(receive, DRAIN_MAX_BYTES)
        await _error(send, 413, self._message(size))

    def _message(self, size: int) -> str:
        return (f"the request body has {size} bytes or more; the limit is {self.max_bytes} bytes (wdmoe serve "
                "--max-body-bytes)")


async def _drain(receive: Any, most: int) -> None:
    """Read and discard what the client is still sending (up to `most` bytes), so that it reads our 413 instead of a
    reset connection; nothing is kept, so a large body costs the copy, not the memory. Beyond `most` the connection
    is closed after the answer."""
    drained = 0
    while drained <= most:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
        drained += len(message.get("body", b""))


async def _error(send: Any, status: int, message: str) -> None:
    body = json.dumps(error_body(message, "invalid_request_error",
                                 code="request_too_large" if status == 413 else None)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
