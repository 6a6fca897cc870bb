"""The policy server behind `pirl serve`: one bundle, many clients, over websockets (msgpack messages, wire.py).

    server = PolicyServer(open_bundle("bundles/pushcube"), token="s3cret", host="0.0.0.0", port=8765)
    server.start()            # serves on a thread; server.port is the bound port (port=0 picks a free one)
    ...
    server.shutdown()

Each client gets the bundle's id and spec on connect (protocol.py), then sends `infer`, `health` and optionally
`attach` (its robot spec, checked with PolicySpec.check_compatible). Each client has a thread that reads a
request, answers it and writes the reply itself (websockets' Sans-I/O protocol on a blocking socket,
connection.py: no hand-off between threads in the request path); one forward pass runs at a time (the policy's
lock). A client that vanishes without closing is dropped by TCP keepalive. Authentication: the websocket handshake must
carry `Authorization: Bearer <token>` (compared in constant time), else HTTP 401 before the socket opens;
TLS when an ssl context is given. Messages larger than `max_message_bytes` close that connection (websockets'
limit, close code 1009); malformed messages get an `error` reply and the connection stays usable.
"""

from __future__ import annotations

import hmac
import socket
import threading
import time
from typing import Callable

import numpy as np

from pirl_robot.deploy.stats import Rolling
from pirl_robot.serve import protocol as P
from pirl_robot.serve.connection import ConnectionClosed, InvalidHandshake, ServerConnection
from pirl_robot.serve.wire import WireError, pack, unpack

DEFAULT_MAX_MESSAGE_BYTES = 8 << 20  # two 640x480 RGB frames and a state fit four times over


class PolicyServer:
    def __init__(self, bundle, token: str | None, host: str = "127.0.0.1", port: int = 8765,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, ssl_context=None,
                 log: Callable[[str], None] = print):
        if token is None and host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("a server reachable from other machines needs a token (PIRL_SERVE_TOKEN)")
        self.bundle, self.policy, self.spec = bundle, bundle.policy, bundle.policy.spec
        self.token, self.host, self.max_message_bytes, self.ssl_context, self.log = (
            token, host, max_message_bytes, ssl_context, log)
        self.noise_shape = self.policy.noise_shape
        self._requested_port = port
        self._policy_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self.counts = {"clients": 0, "connections": 0, "requests": 0, "errors": 0, "refused": 0}
        self._infer_ms = Rolling(1000)  # the last forwards, for health
        self._started = time.monotonic()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._conns: set[ServerConnection] = set()
        self._client_threads: set[threading.Thread] = set()

    # --- lifecycle ------------------------------------------------------------------------------------------
    def warm_up(self) -> None:
        """One forward pass with and one without a real-time-chunking prefix on a blank observation, so the first
        client does not pay for lazy imports, allocations and kernel selection (and a broken model fails here)."""
        from pirl_robot.flow.rtc import ChunkPrefix, load_lerobot_rtc

        load_lerobot_rtc()
        s = self.spec
        obs = {"state": np.zeros(s.state_dim, np.float32), "instruction": s.instruction,
               "images": {c.name: np.zeros((c.height, c.width, 3), np.uint8) for c in s.cameras}}
        actions = self.policy.infer(obs)["actions"]
        self.policy.infer(obs, prefix=ChunkPrefix(actions, 1, s.chunk_size))

    def start(self, warm_up: bool = True) -> "PolicyServer":
        """Bind (OSError if the port is taken) and accept clients on a thread of its own."""
        if warm_up:
            self.warm_up()
        self._listener = socket.create_server((self.host, self._requested_port))
        self._listener.settimeout(0.2)  # the accept loop looks at _stopping this often
        self._stopping.clear()
        self._thread = threading.Thread(target=self._accept_loop, name="pirl-serve", daemon=True)
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        return self._listener.getsockname()[1]

    def serve_forever(self) -> None:
        if self._thread is None:
            self.start()
        self._thread.join()

    def shutdown(self) -> None:
        """Stop accepting, close every client's connection (close code 1001) and wait for their threads."""
        if self._thread is None:
            return
        self._stopping.set()
        self._thread.join(timeout=5)
        with self._stats_lock:
            conns = list(self._conns)
        for conn in conns:
            conn.close(1001)  # (its thread's recv wakes up and the thread ends)
        for t in list(self._client_threads):
            t.join(timeout=5)
        self._listener.close()
        self._thread = None

    def hello(self) -> dict:
        return {"type": "hello", "protocol": P.PROTOCOL, "bundle_id": self.bundle.bundle_id,
                "content_sha256": self.bundle.content_sha256, "model_kind": self.policy.model_kind,
                "spec": self.spec.to_dict(), "noise_shape": list(self.noise_shape),
                "max_message_bytes": self.max_message_bytes}

    # --- connections ------------------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._client, args=(sock,), name="pirl-serve-client", daemon=True)
            self._client_threads.add(t)
            t.start()

    def _authorize(self, request) -> tuple[int, str] | None:
        if self.token is None:
            return None
        got = request.headers.get("Authorization", "")
        if hmac.compare_digest(got.encode(), f"Bearer {self.token}".encode()):
            return None
        with self._stats_lock:
            self.counts["refused"] += 1
        return 401, "missing or wrong token (send 'Authorization: Bearer <token>')\n"

    def _client(self, sock: socket.socket) -> None:
        """One client, on its own thread: handshake, hello, then read a request, answer it, write the reply."""
        try:
            try:
                _keepalive(sock)
                conn = ServerConnection.accept(sock, self._authorize, self.max_message_bytes,
                                               ssl_context=self.ssl_context)
            except (OSError, InvalidHandshake):
                sock.close()  # a port scan, a client that spoke no websocket or no TLS: nothing to answer
                return
            if conn is not None:  # (None: refused, 401 sent)
                self._serve(conn)
        finally:
            self._client_threads.discard(threading.current_thread())

    def _serve(self, conn: ServerConnection) -> None:
        with self._stats_lock:
            self.counts["clients"] += 1
            self.counts["connections"] += 1
            self._conns.add(conn)
        close_code = 1000
        try:
            conn.send(pack(self.hello()))
            while not self._stopping.is_set():
                reply, close = self._answer(conn.recv(timeout=None))
                conn.send(pack(reply))
                if close:
                    close_code = 1008  # the robot spec does not match the served policy
                    return
        except (ConnectionClosed, OSError):
            pass  # the client left, or the protocol failed the connection (e.g. 1009, a message over the limit)
        finally:
            conn.close(close_code, drain_s=1.0)  # the client gets the close frame even while it is still sending
            with self._stats_lock:
                self.counts["clients"] -= 1
                self._conns.discard(conn)

    def _answer(self, data) -> tuple[dict, bool]:
        """(reply, close the connection after it)."""
        t0 = time.perf_counter()
        rid = None
        try:
            msg = unpack(data, self.max_message_bytes)
            kind = msg.get("type")
            if kind == "infer":
                req = P.parse_infer(msg, self.spec, self.noise_shape)
                rid = req.id
                return self._infer(req, t0), False
            if kind == "health":
                rid = P.request_id(msg)
                return self.health(rid), False
            if kind == "attach":
                return self._attach(msg), False
            raise P.RequestError("bad_request", f"unknown message type {kind!r} (infer, health, attach)")
        except WireError as e:
            return self._error("bad_message", str(e), rid), False
        except P.RequestError as e:
            return self._error(e.code, str(e), rid), e.code == "spec_mismatch"

    def _attach(self, msg: dict) -> dict:
        from pirl_robot.spec import PolicySpec, SpecError

        try:
            robot = PolicySpec.from_dict(msg.get("robot_spec"))
        except (SpecError, TypeError, AttributeError, ValueError) as e:
            raise P.RequestError("bad_request", f"robot_spec is not a valid spec: {e}") from None
        try:
            self.spec.check_compatible(robot)
        except SpecError as e:
            raise P.RequestError("spec_mismatch", f"bundle {self.bundle.bundle_id}: {e}") from None
        return {"type": "attached", "bundle_id": self.bundle.bundle_id}

    def _infer(self, req: P.InferRequest, t0: float) -> dict:
        from pirl_robot.policy import ObservationError

        try:
            with self._policy_lock:
                t1 = time.perf_counter()
                actions = self.policy.infer(req.obs, noise=req.noise, prefix=req.prefix)["actions"]
                infer_ms = (time.perf_counter() - t1) * 1e3
        except ObservationError as e:
            return self._error("observation", str(e), req.id)
        except Exception as e:  # a failing model must not take the server down: the client's watchdog decides
            self.log(f"pirl serve: inference failed: {type(e).__name__}: {e}")
            return self._error("internal", f"{type(e).__name__}: {e}", req.id)
        with self._stats_lock:
            self.counts["requests"] += 1
        self._infer_ms.add(infer_ms)
        return {"type": "result", "id": req.id, "actions": actions.astype("float32"),
                "timing": {"infer_ms": infer_ms, "server_ms": (time.perf_counter() - t0) * 1e3}}

    def _error(self, code: str, message: str, rid: int | None) -> dict:
        with self._stats_lock:
            self.counts["errors"] += 1
        return P.error(code, message, rid)

    def health(self, rid: int | None = None) -> dict:
        with self._stats_lock:
            counts = dict(self.counts)
        infer = self._infer_ms.values()
        # one percentile call on an array: np.percentile of a 1000-entry list took ~1 ms on a cold cache,
        # half of a health round trip (bench/bench_serve.py)
        p50, p99 = np.percentile(infer, [50, 99]).tolist() if infer.size else (None, None)
        return {"type": "health", "id": rid, "ok": True, "bundle_id": self.bundle.bundle_id,
                "uptime_s": time.monotonic() - self._started, **counts, "infer_ms_p50": p50, "infer_ms_p99": p99}


def _keepalive(sock: socket.socket, idle_s: int = 10, interval_s: int = 5, count: int = 3) -> None:
    """TCP keepalive: the thread of a client whose machine went away (no FIN) ends after ~25 s."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", idle_s), ("TCP_KEEPINTVL", interval_s), ("TCP_KEEPCNT", count)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
