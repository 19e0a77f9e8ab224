"""A lean HTTP/2-over-TLS client for load generation: asyncio + the `h2` state machine.

httpx costs several hundred microseconds of client CPU per request; on a 2-core machine that
CPU is taken from the server being measured. This client multiplexes many streams over a few
TLS connections (what a mobile app's HTTP/2 stack does) and costs about a tenth of that.

    pool = H2Pool("localhost", 8443, ssl_context, connections=4)
    status, body = await pool.request("GET", "/api/v1/orders/active", headers)
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

Headers = list[tuple[bytes, bytes]]


class StreamError(ConnectionError):
    """The stream or its connection failed before a complete response arrived."""


@dataclass
class _Stream:
    future: asyncio.Future
    status: int = 0
    body: bytearray = field(default_factory=bytearray)


class H2Connection(asyncio.Protocol):
    def __init__(self, authority: bytes) -> None:
        self.authority = authority
        config = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                           validate_inbound_headers=False,
                                           validate_outbound_headers=False,
                                           normalize_outbound_headers=False)
        self._conn = h2.connection.H2Connection(config=config)
        self._conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20,
                                         h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, _Stream] = {}
        # Requests waiting for a free stream slot (the server's max_concurrent_streams).
        self._waiting: collections.deque = collections.deque()
        # Bodies waiting for flow-control window: stream id -> remaining bytes.
        self._unsent: dict[int, memoryview] = {}
        self.closed: asyncio.Future | None = None
        self.alive = False

    # --- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, host: str, port: int, context: ssl.SSLContext,
                   server_hostname: str | None = None) -> H2Connection:
        loop = asyncio.get_running_loop()
        authority = f"{server_hostname or host}:{port}".encode()
        _, protocol = await loop.create_connection(
            lambda: cls(authority), host, port, ssl=context,
            server_hostname=server_hostname or host)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self.closed = asyncio.get_running_loop().create_future()
        self._conn.initiate_connection()
        self._conn.increment_flow_control_window(1 << 24)
        self._flush()
        self.alive = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        self._fail_all(StreamError(f"connection lost: {exc!r}" if exc else "connection closed"))
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        if self._transport is not None:
            try:
                self._conn.close_connection()
                self._flush()
            except h2.exceptions.ProtocolError:
                pass
            self._transport.close()

    @property
    def in_flight(self) -> int:
        return len(self._streams) + len(self._waiting)

    # --- requests ----------------------------------------------------------------------------

    def request(self, method: bytes, path: bytes, headers: Headers = (), body: bytes = b""
                ) -> asyncio.Future:
        """Future of (status, body bytes)."""
        future = asyncio.get_running_loop().create_future()
        if not self.alive:
            future.set_exception(StreamError("connection is closed"))
            return future
        item = (future, method, path, headers, body)
        if self._conn.open_outbound_streams >= self._conn.remote_settings.max_concurrent_streams:
            self._waiting.append(item)
        else:
            self._start(*item)
            self._flush()
        return future

    def _start(self, future: asyncio.Future, method: bytes, path: bytes, headers: Headers,
               body: bytes) -> None:
        stream_id = self._conn.get_next_available_stream_id()
        request_headers = [(b":method", method), (b":scheme", b"https"),
                           (b":authority", self.authority), (b":path", path), *headers]
        if body:
            request_headers.append((b"content-length", str(len(body)).encode()))
        self._streams[stream_id] = _Stream(future)
        self._conn.send_headers(stream_id, request_headers, end_stream=not body)
        if body:
            self._unsent[stream_id] = memoryview(body)
            self._send_bodies()

    def _send_bodies(self) -> None:
        for stream_id in list(self._unsent):
            data = self._unsent[stream_id]
            try:
                window = min(self._conn.local_flow_control_window(stream_id),
                             self._conn.max_outbound_frame_size)
            except (h2.exceptions.StreamClosedError, KeyError):
                del self._unsent[stream_id]
                continue
            while data and window > 0:
                chunk, data = data[:window], data[window:]
                self._conn.send_data(stream_id, bytes(chunk), end_stream=not data)
                window = min(self._conn.local_flow_control_window(stream_id),
                             self._conn.max_outbound_frame_size)
            if data:
                self._unsent[stream_id] = data
            else:
                del self._unsent[stream_id]

    def _start_waiting(self) -> None:
        limit = self._conn.remote_settings.max_concurrent_streams
        while self._waiting and self._conn.open_outbound_streams < limit:
            self._start(*self._waiting.popleft())

    # --- incoming ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        try:
            events = self._conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._fail_all(StreamError(f"protocol error: {exc!r}"))
            if self._transport is not None:
                self._transport.close()
            return
        for event in events:
            kind = type(event)
            if kind is h2.events.ResponseReceived:
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    for name, value in event.headers:
                        if name == b":status":
                            stream.status = int(value)
                            break
            elif kind is h2.events.DataReceived:
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream.body += event.data
                if event.flow_controlled_length:
                    self._conn.acknowledge_received_data(event.flow_controlled_length,
                                                         event.stream_id)
            elif kind is h2.events.StreamEnded:
                stream = self._streams.pop(event.stream_id, None)
                if stream is not None and not stream.future.done():
                    stream.future.set_result((stream.status, bytes(stream.body)))
            elif kind is h2.events.StreamReset:
                stream = self._streams.pop(event.stream_id, None)
                self._unsent.pop(event.stream_id, None)
                if stream is not None and not stream.future.done():
                    if stream.status:
                        # A reply (e.g. 413) before the whole body was sent, then a reset.
                        stream.future.set_result((stream.status, bytes(stream.body)))
                    else:
                        stream.future.set_exception(
                            StreamError(f"stream reset (error code {event.error_code})"))
            elif kind is h2.events.WindowUpdated:
                self._send_bodies()
            elif kind is h2.events.ConnectionTerminated:
                self.alive = False
                self._fail_all(StreamError(f"GOAWAY (error code {event.error_code})"))
        self._start_waiting()
        self._flush()

    def _fail_all(self, error: Exception) -> None:
        streams, self._streams = self._streams, {}
        waiting, self._waiting = self._waiting, collections.deque()
        self._unsent.clear()
        for stream in streams.values():
            if not stream.future.done():
                stream.future.set_exception(error)
        for future, *_ in waiting:
            if not future.done():
                future.set_exception(error)

    def _flush(self) -> None:
        data = self._conn.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)


class H2Pool:
    """A few HTTP/2 connections; each request goes to the least busy one. A lost connection is
    replaced on the next request (its in-flight requests fail and are counted as errors)."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, *, connections: int = 4,
                 server_hostname: str | None = None) -> None:
        self.host, self.port, self.context = host, port, context
        self.server_hostname = server_hostname
        self.size = connections
        self._connections: list[H2Connection] = []
        self._opening: asyncio.Task | None = None

    async def start(self) -> None:
        self._connections = list(await asyncio.gather(*(
            H2Connection.open(self.host, self.port, self.context, self.server_hostname)
            for _ in range(self.size))))

    async def _replace_dead(self) -> None:
        alive = [c for c in self._connections if c.alive]
        missing = self.size - len(alive)
        fresh = []
        for _ in range(missing):
            try:
                fresh.append(await H2Connection.open(self.host, self.port, self.context,
                                                     self.server_hostname))
            except OSError:
                break
        self._connections = alive + fresh

    async def request(self, method: str, path: str, headers: Headers = (), body: bytes = b""
                      ) -> tuple[int, bytes]:
        if not all(c.alive for c in self._connections) or not self._connections:
            if self._opening is None or self._opening.done():
                self._opening = asyncio.ensure_future(self._replace_dead())
            await asyncio.shield(self._opening)
            if not self._connections:
                raise StreamError("no connection to the server")
        connection = min(self._connections, key=lambda c: c.in_flight)
        return await connection.request(method.encode(), path.encode(), headers, body)

    async def close(self) -> None:
        for connection in self._connections:
            connection.close()
        await asyncio.sleep(0)


def tls_context(ca_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["h2"])
    return context
