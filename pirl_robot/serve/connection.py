"""Websocket connections that do their I/O in the thread that uses them: websockets' Sans-I/O protocols
(framing, masking, handshake, close, ping/pong, size limits) over plain blocking sockets, for both ends of
`pirl serve`.

Why not websockets' sync or asyncio connections: the sync ones read the socket on a thread of their own and hand
every message over through a condition variable (four thread wake-ups per request-reply round trip); the asyncio
server adds an event loop's callbacks and futures between the socket and the handler. Here the client sends and
then blocks in recv() on the socket itself, and the server gives each client a thread that reads, answers and
writes: one wake-up per side (bench/bench_serve.py measures the difference).

    conn = ClientConnection.open("ws://127.0.0.1:8765", headers={"Authorization": "Bearer s3cret"}, timeout=2.0)
    conn.send(b"...")
    reply = conn.recv(timeout=1.0)      # bytes (str for a text frame); TimeoutError, ConnectionClosed
    conn.close()

    conn = ServerConnection.accept(sock, authorize=check, max_size=8 << 20)   # None if the handshake was refused

Not thread-safe: one user at a time. `poll_idle` lets a client's watcher thread, holding the caller's lock between
requests, answer pings, send keepalive pings and find a peer that closed or went silent.
"""

from __future__ import annotations

import select
import socket
import ssl as ssl_module
import time
from typing import Callable

from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

__all__ = ["ClientConnection", "ConnectionClosed", "InvalidHandshake", "InvalidStatus", "ServerConnection"]

_RECV_BYTES = 1 << 16
# Linux reports a peer's FIN as POLLRDHUP without waking for ordinary data; elsewhere a watcher finds a closed peer
# only at its next keepalive read.
_PEER_CLOSED = getattr(select, "POLLRDHUP", 0)


class Connection:
    """One open websocket on a blocking socket; the common part of both ends."""

    def __init__(self, sock: socket.socket, protocol: Protocol):
        self.sock, self.protocol = sock, protocol
        self._fragments: list[bytes] = []
        self._text = False
        self._messages: list[bytes | str] = []
        self._ping_sent_at: float | None = None  # an unanswered keepalive ping

    # --- messages -------------------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        self._check_open()
        self.protocol.send_binary(data)
        self._flush()

    def recv(self, timeout: float | None) -> bytes | str:
        """The next data message; TimeoutError after `timeout` seconds without one (None: wait as long as it
        takes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._messages:
            self._receive(deadline)
        return self._messages.pop(0)

    @property
    def is_open(self) -> bool:
        return self.protocol.state is State.OPEN

    def close(self, code: int = 1000, drain_s: float = 0.0) -> None:
        """Send a close frame (best effort), shut the socket down (which also wakes a thread blocked in recv() on
        it) and close it. With `drain_s`, first half-close and read (discarding) what the peer still sends, until
        it closes or `drain_s` seconds pass: a socket closed with unread data resets the connection, and a peer
        still sending (the rest of a message over the size limit) would lose the close frame and its code."""
        try:
            if self.protocol.state is State.OPEN:
                self.protocol.send_close(code)
                self._flush()
        except OSError:
            pass
        if drain_s > 0:
            self._drain(drain_s)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def _drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        try:
            self.sock.shutdown(socket.SHUT_WR)
            while (remaining := deadline - time.monotonic()) > 0:
                self.sock.settimeout(remaining)
                if not self.sock.recv(_RECV_BYTES):
                    return  # the peer closed too
        except OSError:  # (a timeout included)
            pass

    # --- internals ------------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.protocol.state is not State.OPEN:
            raise self._closed()

    def _closed(self) -> ConnectionClosed:
        p = self.protocol
        if p.state is State.CLOSED:
            return p.close_exc
        return ConnectionClosed(p.close_rcvd, p.close_sent, p.close_rcvd_then_sent)  # (close_exc: CLOSED only)

    def _flush(self) -> None:
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.sock.sendall(chunk)
            elif self.protocol.close_expected():  # b"": the protocol asks to half-close (after a close frame)
                try:
                    self.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

    def _receive(self, deadline: float | None, block: bool = True) -> list:
        """Read once from the socket (waiting until `deadline`, None: for ever, when `block`), feed the protocol,
        sort its events: data messages to self._messages; pings are answered (the protocol queues the pong).
        Returns the events."""
        if self._messages and block:
            return []
        if not block:
            self.sock.settimeout(0.0)
        elif deadline is None:
            self.sock.settimeout(None)
        else:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no message before the deadline")
            self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(_RECV_BYTES)
        except (BlockingIOError, ssl_module.SSLWantReadError):
            return []
        except socket.timeout:
            raise TimeoutError("no message before the deadline") from None
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        events = self.protocol.events_received()
        self._flush()  # pongs, the answer to a close
        for event in events:
            if isinstance(event, Frame):
                self._on_frame(event)
        if any(isinstance(e, (Request, Response)) for e in events):
            return events  # the handshake: open() / accept() read it
        if self.protocol.state is State.CONNECTING and not data:
            raise InvalidHandshake("the peer closed the connection during the handshake")
        if self.protocol.state in (State.CLOSING, State.CLOSED) and not self._messages:
            raise self._closed()
        return events

    def _on_frame(self, frame: Frame) -> None:
        if frame.opcode in (Opcode.BINARY, Opcode.TEXT, Opcode.CONT):
            if frame.opcode is not Opcode.CONT:
                self._text = frame.opcode is Opcode.TEXT
            self._fragments.append(bytes(frame.data))
            if frame.fin:
                data = b"".join(self._fragments)
                self._messages.append(data.decode() if self._text else data)  # (the protocol checked UTF-8)
                self._fragments.clear()
        elif frame.opcode is Opcode.PONG:
            self._ping_sent_at = None


class ClientConnection(Connection):
    def __init__(self, sock: socket.socket, protocol: ClientProtocol):
        super().__init__(sock, protocol)
        self._poller = select.poll()
        self._poller.register(sock, _PEER_CLOSED | select.POLLHUP | select.POLLERR)

    # --- opening --------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, url: str, headers: dict[str, str] | None = None, timeout: float = 2.0,
             ssl_context: ssl_module.SSLContext | None = None, max_size: int | None = 1 << 20) -> "ClientConnection":
        """TCP (+ TLS) connect and the websocket handshake, all within `timeout` seconds. Raises OSError /
        TimeoutError / ssl.SSLError for the socket, InvalidStatus when the server answers the handshake with an
        HTTP error (e.response.status_code), InvalidHandshake for anything else the server got wrong."""
        uri = parse_uri(url)
        deadline = time.monotonic() + timeout
        sock = socket.create_connection((uri.host, uri.port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small messages leave at once
            if uri.secure:
                ctx = ssl_context or ssl_module.create_default_context()
                sock = ctx.wrap_socket(sock, server_hostname=uri.host)
            protocol = ClientProtocol(uri, max_size=max_size)
            request = protocol.connect()
            for name, value in (headers or {}).items():
                request.headers[name] = value
            protocol.send_request(request)
            conn = cls(sock, protocol)
            conn._flush()
            try:
                while not any(isinstance(e, Response) for e in conn._receive(deadline)):
                    pass
            except ConnectionClosed:  # not an HTTP answer (e.g. TLS bytes to a plain client)
                raise protocol.handshake_exc or InvalidHandshake("the server closed the connection during the "
                                                                 "handshake") from None
            if protocol.handshake_exc is not None:
                raise protocol.handshake_exc
            return conn
        except BaseException:
            sock.close()
            raise

    # --- idle upkeep (a watcher thread between requests) ----------------------------------------------------
    def wait_peer_closed(self, timeout: float) -> bool:
        """Block up to `timeout` s until the peer closes or errors (no wake-up for ordinary data on Linux)."""
        return bool(self._poller.poll(max(0, int(timeout * 1e3))))

    def poll_idle(self, ping_timeout: float) -> str | None:
        """Between requests: read what has arrived (pongs, a close), send the next keepalive ping. Returns why the
        connection is lost (peer closed, or the last ping unanswered for `ping_timeout` s), else None."""
        try:
            self._receive(time.monotonic(), block=False)
        except ConnectionClosed as e:
            return f"closed by the server ({e})"
        except OSError as e:
            return f"{type(e).__name__}: {e}"
        now = time.monotonic()
        if self._ping_sent_at is not None and now - self._ping_sent_at > ping_timeout:
            return f"no answer to a keepalive ping within {ping_timeout:.1f} s"
        if self._ping_sent_at is None:
            try:
                self.protocol.send_ping(b"pirl")
                self._flush()
            except OSError as e:
                return f"{type(e).__name__}: {e}"
            self._ping_sent_at = now
        return None


class ServerConnection(Connection):
    @classmethod
    def accept(cls, sock: socket.socket, authorize: Callable[[Request], tuple[int, str] | None],
               max_size: int | None, timeout: float = 10.0,
               ssl_context: ssl_module.SSLContext | None = None) -> "ServerConnection | None":
        """The server's side of the handshake on an accepted socket (TLS first when `ssl_context`), within
        `timeout` s. `authorize(request)` returns None to accept, or (HTTP status, body) to refuse: the refusal is
        sent, the socket closed and None returned. OSError / InvalidHandshake for a client that got it wrong."""
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(timeout)
        try:
            if ssl_context is not None:
                sock = ssl_context.wrap_socket(sock, server_side=True)
            conn = cls(sock, ServerProtocol(max_size=max_size))
            deadline = time.monotonic() + timeout
            request = None
            while request is None:
                events = conn._receive(deadline)
                request = next((e for e in events if isinstance(e, Request)), None)
                if request is None and conn.protocol.handshake_exc is not None:
                    raise conn.protocol.handshake_exc
            refusal = authorize(request)
            response = conn.protocol.accept(request) if refusal is None else conn.protocol.reject(*refusal)
            conn.protocol.send_response(response)
            conn._flush()
            if conn.protocol.handshake_exc is not None:
                raise conn.protocol.handshake_exc
        except BaseException:
            sock.close()
            raise
        if refusal is not None:
            sock.close()
            return None
        return conn
