"""A TCP proxy on loopback that cuts or stalls a connection once the server has sent so many bytes.

Placed between a clinic and a patient's node (the clinic's connection endpoint
and the patient's public endpoint both name the proxy, so the signed ``Host``
is one the patient's node accepts), it forwards both directions as they come
and counts what the server sent.  ``cut_after(n)`` closes the next connection
on which the server has sent ``n`` bytes, as a dropped link would, in the
middle of an answer; ``stall_after(n)`` stops forwarding there instead, so a
test can kill the client while its download hangs.  Each fault applies once.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

_PIECE = 1 << 16


@dataclass
class FaultProxy:
    """Forwards ``127.0.0.1:<port>`` to ``127.0.0.1:<target>``."""

    target: int
    port: int = 0
    #: Bytes the server sent through the proxy, over every connection so far.
    downstream: int = 0
    #: The first bytes each connection's client sent (its request line and header fields).
    requests: list[bytes] = field(default_factory=list)
    _fault: tuple[str, int] | None = None
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    stalled: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut_after(self, size: int) -> None:
        """Close the next connection on which the server has sent ``size`` bytes, both ways."""
        self._fault = ("cut", size)

    def stall_after(self, size: int) -> None:
        """Stop forwarding on the next connection on which the server has sent ``size`` bytes."""
        self.stalled.clear()
        self._fault = ("stall", size)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target)
            index = len(self.requests)
            self.requests.append(b"")
            upstream = asyncio.create_task(self._up(client_reader, server_writer, index))
            try:
                await self._down(server_reader, client_writer)
            finally:
                upstream.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await upstream
                server_writer.close()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            client_writer.close()
            self._tasks.discard(task)

    async def _up(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        while data := await reader.read(_PIECE):
            if len(self.requests[index]) < 8192:
                self.requests[index] += data[: 8192 - len(self.requests[index])]
            writer.write(data)
            await writer.drain()
        writer.close()

    async def _down(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sent = 0
        while data := await reader.read(_PIECE):
            fault = self._fault
            if fault is not None and sent + len(data) >= fault[1]:
                self._fault = None
                data = data[: fault[1] - sent]
                writer.write(data)
                self.downstream += len(data)
                await writer.drain()
                if fault[0] == "stall":
                    self.stalled.set()
                    await asyncio.Event().wait()  # until the test closes the proxy or the client goes
                writer.transport.abort()
                return
            writer.write(data)
            sent += len(data)
            self.downstream += len(data)
            await writer.drain()
