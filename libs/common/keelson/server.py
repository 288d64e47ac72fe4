"""uvicorn's httptools protocol, with a response's head and body leaving in one write.

uvicorn writes a response's status line and headers as soon as the app sends
`http.response.start`, and its body in a second write: two system calls, and two
segments on the wire, for every small answer. `HttpProtocol` gives each request a
`WriteCombiner` in `scope["keelson.write_combiner"]`; `keelson.http.ServiceMiddleware`
holds the head in it when the response has a `Content-Length` (its body is at hand, not
a stream), and lets both leave together after the first body message. Everything else
about the protocol is uvicorn's.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["COMBINER", "HttpProtocol", "WriteCombiner"]

COMBINER = "keelson.write_combiner"


class WriteCombiner:
    """Stands for a connection's transport in uvicorn's request cycle; between `hold()` and
    `flush()`, writes are kept and then sent as one."""

    __slots__ = ("_held", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._held: list[bytes] | None = None

    def hold(self) -> None:
        if self._held is None:
            self._held = []

    def flush(self) -> None:
        held, self._held = self._held, None
        if held:
            self.transport.write(held[0] if len(held) == 1 else b"".join(held))

    def write(self, data: bytes) -> None:
        if self._held is None:
            self.transport.write(data)
        else:
            self._held.append(data)

    def close(self) -> None:
        self.flush()  # what was held goes out first, as it would have without holding
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's `HttpToolsProtocol` whose request cycles write through a `WriteCombiner`."""

    combiner: WriteCombiner

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.combiner = WriteCombiner(transport)

    def on_headers_complete(self) -> None:
        scope = self.scope
        scope[COMBINER] = self.combiner  # type: ignore[literal-required]
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is scope:  # not an upgrade to WebSocket
            cycle.transport = self.combiner  # type: ignore[assignment]
