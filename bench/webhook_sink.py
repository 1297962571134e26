"""The sector systems' webhook endpoints in the end-to-end bench: a minimal HTTP/1.1 server on
127.0.0.1 that answers every delivery 204 and counts it, by sector (the path's last part). Minimal
on purpose: the bench measures the bus's deliveries, not a receiver's framework, and shares 2 cores
with what it measures. Signatures are checked by the gateway tests (tests/gateway/), not here."""

import asyncio
from collections import Counter


class WebhookSink:
    def __init__(self) -> None:
        self.deliveries: Counter[str] = Counter()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> "WebhookSink":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, sector: str) -> str:
        return f"http://127.0.0.1:{self.port}/{sector}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                path = head.split(b" ", 2)[1].decode()
                self.deliveries[path.rsplit("/", 1)[-1]] += 1
                writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
