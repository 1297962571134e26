"""A very small HTTP/1.1 server on asyncio streams for the dashboard and the exporter: GET only,
one response per connection, plus server-sent event streams. Standard library only."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)


@dataclass
class Response:
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    status: str = "200 OK"


Route = Callable[[], Awaitable[Response]]
Stream = Callable[[], AsyncIterator[bytes]]
"Yields the data of each server-sent event (one JSON document each)."


async def serve(host: str, port: int, routes: dict[str, Route], streams: dict[str, Stream]) -> asyncio.Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5.0)
            while (await asyncio.wait_for(reader.readline(), 5.0)) not in (b"\r\n", b"\n", b""):
                pass  # headers: nothing here needs them
            parts = request_line.decode("latin-1").split(" ")
            method, path = (parts[0], parts[1].split("?")[0]) if len(parts) >= 3 else ("", "")
            if method != "GET":
                response = Response(b"GET only\n", status="405 Method Not Allowed")
            elif path in streams:
                await _stream(writer, streams[path])
                return
            elif path in routes:
                response = await routes[path]()
            else:
                response = Response(b"not found\n", status="404 Not Found")
            writer.write(
                f"HTTP/1.1 {response.status}\r\nContent-Type: {response.content_type}\r\n"
                f"Content-Length: {len(response.body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n".encode()
                + response.body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception as exc:
            log.warning("http_request_failed", error=repr(exc))
        finally:
            writer.close()

    return await asyncio.start_server(answer, host, port)


async def _stream(writer: asyncio.StreamWriter, events: Stream) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
        b"Connection: keep-alive\r\n\r\n"
    )
    await writer.drain()
    async for data in events():
        writer.write(b"data: " + data + b"\n\n")
        await writer.drain()
