"""A TCP relay in front of the real Prefect server, for an API that is slow or down.

The tests point one flow's API settings at :class:`ApiProxy`'s address: while it
``hold()``s, the requests it has accepted wait unanswered (an API that accepts a
connection and answers late) until ``release()``; while it ``refuse()``s, nothing
listens at its address (a server that is down) until ``listen()``.  Every byte it
forwards is the real server's.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Optional, Set

from prefect_future_anchor.server import free_port


class ApiProxy:
    def __init__(self, api_url: str) -> None:
        rest = api_url.split("://", 1)[1]
        host_port, _, path = rest.partition("/")
        self._upstream_host, _, port = host_port.partition(":")
        self._upstream_port = int(port or 80)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/{path}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="api-proxy", daemon=True)
        self._server: Optional[asyncio.AbstractServer] = None
        self._open: Optional[asyncio.Event] = None
        self._writers: Set[Any] = set()

    def __enter__(self) -> "ApiProxy":
        self._thread.start()
        self._call(self._init())
        self.listen()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
        self.refuse()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(60)

    async def _init(self) -> None:
        self._open = asyncio.Event()
        self._open.set()

    def hold(self) -> None:
        """Requests (and websocket messages) wait unanswered from now on."""
        self._loop.call_soon_threadsafe(self._open.clear)

    def release(self) -> None:
        """What waits is forwarded, and everything after it."""
        self._loop.call_soon_threadsafe(self._open.set)

    def listen(self) -> None:
        async def start() -> None:
            if self._server is None:
                self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port, reuse_address=True)

        self._call(start())

    def refuse(self) -> None:
        """Stop listening and drop every connection: connections are refused."""

        async def stop() -> None:
            server, self._server = self._server, None
            if server is not None:
                server.close()
                await server.wait_closed()
            for writer in list(self._writers):
                writer.close()

        self._call(stop())

    async def _relay(self, reader: Any, writer: Any) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self._upstream_host, self._upstream_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def pump(source: Any, sink: Any, gated: bool) -> None:
            try:
                while True:
                    data = await source.read(65536)
                    if not data:
                        break
                    if gated:
                        await self._open.wait()
                    sink.write(data)
                    await sink.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                sink.close()

        try:
            await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))
        finally:
            self._writers.difference_update((writer, up_writer))
