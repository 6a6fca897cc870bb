"""The client side of `pirl serve`: `RemotePolicy` has the Policy interface (spec, infer) over the network.

    policy = RemotePolicy("remote://gpu-box:8765", token=os.environ["PIRL_SERVE_TOKEN"], robot_spec=robot)
    out = policy.infer({"state": q, "images": {"wrist": img}}, noise=noise)    # out["actions"]: (H, A)
    policy.health()            # the server's counters and inference times

URLs: remote://HOST:PORT (plain websocket), remote+tls://HOST:PORT (TLS; `tls_ca` is the CA file that signed the
server's certificate, default: the system's), or ws:// / wss:// as such. Only the robot's side (numpy, msgpack,
websockets' Sans-I/O protocol, connection.py) runs here: no torch model is loaded. A request is sent and its reply
read in the caller's thread; a watcher thread keeps the idle connection alive between requests.

Failures are exceptions of `infer`, which the deploy node's inference worker turns into a policy fault (hold, then
a controlled stop): RemotePolicyError (a ConnectionError: server gone, refused, wrong token) and
RemotePolicyTimeout (a TimeoutError: no answer within `timeout_s`; the connection is dropped so a late answer
cannot be taken for the next one). The next `infer` reconnects; a server that now serves another bundle is refused
(the node was configured and checked for the first one).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from pirl_robot.flow.rtc import ChunkPrefix
from pirl_robot.serve import protocol as P
from pirl_robot.serve.connection import ClientConnection, ConnectionClosed, InvalidHandshake, InvalidStatus
from pirl_robot.serve.wire import WireError, pack, unpack
from pirl_robot.spec import PolicySpec

SCHEMES = {"remote": "ws", "remote+tls": "wss", "ws": "ws", "wss": "wss"}


class RemotePolicyError(ConnectionError):
    """The policy server cannot be reached, refused us, or broke the protocol."""


class RemotePolicyTimeout(TimeoutError):
    """The policy server did not answer in time."""


class RemoteRequestError(ValueError):
    """The server refused a request (bad observation, spec mismatch...): `code` from protocol.ERROR_CODES."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


def is_remote(url: str) -> bool:
    return url.partition("://")[0] in SCHEMES and "://" in url


def websocket_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES or not rest:
        raise ValueError(f"{url!r} is not a policy server URL (remote://HOST:PORT or remote+tls://HOST:PORT)")
    return f"{SCHEMES[scheme]}://{rest}"


class RemotePolicy:
    def __init__(self, url: str, token: str | None = None, robot_spec: PolicySpec | None = None,
                 timeout_s: float = 1.0, connect_timeout_s: float = 2.0, tls_ca: str | None = None,
                 max_message_bytes: int = 8 << 20):
        self.url, self.ws_url = url, websocket_url(url)
        self.token, self.robot_spec, self.timeout_s, self.connect_timeout_s = token, robot_spec, timeout_s, \
            connect_timeout_s
        self.tls_ca, self.max_message_bytes = tls_ca, max_message_bytes
        self._lock = threading.Lock()  # one request at a time on the one connection
        self._conn = None
        self._next_id = 0
        self.hello: dict = {}
        self.last_timing: dict = {}
        self.reconnects = -1
        # Called when an open connection is lost: between calls on the watcher thread, during one on the caller's
        # thread before its RemotePolicyError. The deploy node makes it a policy fault at once instead of at the
        # next request (ControlLoop.policy_lost).
        self.on_lost: Callable[[str], None] | None = None
        self.connect()
        self.spec = PolicySpec.from_dict(self.hello["spec"])
        self.bundle_id, self.content_sha256 = self.hello["bundle_id"], self.hello["content_sha256"]
        self.model_kind = self.hello["model_kind"]
        self.noise_shape = tuple(self.hello["noise_shape"])

    # --- connection -----------------------------------------------------------------------------------------
    def connect(self) -> None:
        """Open the connection, read the server's hello, attach the robot spec. Raises RemotePolicyError."""
        import ssl

        self._drop()
        ssl_context = ssl.create_default_context(cafile=self.tls_ca) if self.ws_url.startswith("wss://") else None
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            conn = ClientConnection.open(self.ws_url, headers=headers, timeout=self.connect_timeout_s,
                                         ssl_context=ssl_context, max_size=self.max_message_bytes)
        except InvalidStatus as e:
            code = e.response.status_code
            raise RemotePolicyError(f"policy server {self.url} refused the connection: HTTP {code}"
                                    + (" (missing or wrong token)" if code == 401 else "")) from None
        except (OSError, TimeoutError, InvalidHandshake) as e:
            raise RemotePolicyError(f"cannot reach policy server {self.url}: {type(e).__name__}: {e}") from None
        try:
            hello = self._read(conn, self.connect_timeout_s)
            if hello.get("type") != "hello" or hello.get("protocol") != P.PROTOCOL:
                raise RemotePolicyError(f"{self.url} is no pirl policy server of protocol {P.PROTOCOL}: {hello}")
            if self.hello and hello["bundle_id"] != self.hello["bundle_id"]:
                raise RemotePolicyError(f"{self.url} now serves bundle {hello['bundle_id']}, this client was set up "
                                        f"for {self.hello['bundle_id']}: reconfigure the node")
            if self.robot_spec is not None:
                conn.send(pack({"type": "attach", "robot_spec": self.robot_spec.to_dict()}))
                reply = self._read(conn, self.connect_timeout_s)
                if reply.get("type") != "attached":
                    raise RemoteRequestError(reply.get("code", "bad_message"), reply.get("message", str(reply)))
        except BaseException:
            conn.close()
            raise
        self._conn, self.hello = conn, hello
        self.reconnects += 1
        threading.Thread(target=self._watch, args=(conn,), name="pirl-remote-watch", daemon=True).start()

    def _watch(self, conn: ClientConnection) -> None:
        """Between requests: keepalive pings (a server gone without closing, power or cable, is found within ~2
        timeouts) and a peer that closed (found at once on Linux). Never reads while a request is in flight: it
        waits for the lock, so replies wake only the caller."""
        interval = max(1.0, self.timeout_s)
        while True:
            conn.wait_peer_closed(interval)
            with self._lock:
                if conn is not self._conn:
                    return  # dropped or replaced by us
                why = conn.poll_idle(ping_timeout=interval)
                if why is None:
                    continue
                self._drop()
            if self.on_lost is not None:
                self.on_lost(f"policy server {self.url}: connection lost ({why})")
            return

    def _read(self, conn: ClientConnection, timeout: float) -> dict:
        try:
            return unpack(conn.recv(timeout=timeout), self.max_message_bytes)
        except TimeoutError:
            raise RemotePolicyTimeout(f"policy server {self.url}: no answer within {timeout * 1e3:.0f} ms") from None
        except ConnectionClosed as e:
            raise RemotePolicyError(f"policy server {self.url} closed the connection ({e})") from None
        except OSError as e:
            raise RemotePolicyError(f"policy server {self.url}: {type(e).__name__}: {e}") from None
        except WireError as e:
            raise RemotePolicyError(f"policy server {self.url} sent a malformed message: {e}") from None

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._drop()

    @property
    def connected(self) -> bool:
        return self._conn is not None

    # --- requests -------------------------------------------------------------------------------------------
    def _call(self, msg: dict, timeout: float) -> dict:
        lost: RemotePolicyError | None = None
        with self._lock:
            if self._conn is None or not self._conn.is_open:
                self.connect()
            self._next_id += 1
            rid = msg["id"] = self._next_id
            try:
                self._conn.send(pack(msg))
                deadline = time.monotonic() + timeout
                while True:
                    reply = self._read(self._conn, max(0.0, deadline - time.monotonic()))
                    if reply.get("id") == rid or (reply.get("type") == "error" and reply.get("id") is None):
                        break  # (an older answer, e.g. after a timeout on another thread's request, is skipped)
            except RemotePolicyTimeout:  # we drop the connection ourselves: not a loss (a TimeoutError: first)
                self._drop()
                raise
            except RemotePolicyError as e:
                self._drop()
                lost = e
            except (ConnectionClosed, OSError) as e:
                self._drop()
                lost = RemotePolicyError(f"policy server {self.url}: connection lost ({e})")
        if lost is not None:
            if self.on_lost is not None:  # as the watcher does between calls: the node faults at once
                self.on_lost(f"policy server {self.url}: connection lost during a request ({lost})")
            raise lost from None
        if reply.get("type") == "error":
            raise RemoteRequestError(reply.get("code", "?"), reply.get("message", ""))
        return reply

    def infer(self, obs: dict, noise: np.ndarray | None = None, generator: Any = None,
              prefix: ChunkPrefix | None = None) -> dict[str, np.ndarray]:
        """One observation -> {"actions": (chunk_size, action_dim)}, as Policy.infer (single observations only)."""
        if generator is not None:
            raise ValueError("a remote policy takes explicit noise, not a torch generator")
        wire_obs: dict = {"images": {k: np.asarray(v) for k, v in obs.get("images", {}).items()}}
        if "state" in obs:
            wire_obs["state"] = np.asarray(obs["state"], dtype=np.float32)
        if "instruction" in obs:
            wire_obs["instruction"] = obs["instruction"]
        msg: dict = {"type": "infer", "obs": wire_obs}
        if noise is not None:
            msg["noise"] = np.asarray(noise, dtype=np.float32)
        if prefix is not None:
            msg["prefix"] = P.prefix_to_wire(prefix)
        reply = self._call(msg, self.timeout_s)
        actions = reply.get("actions")
        if not isinstance(actions, np.ndarray) or actions.shape != (self.spec.chunk_size, self.spec.action_dim):
            raise RemotePolicyError(f"policy server {self.url} answered actions of shape "
                                    f"{getattr(actions, 'shape', None)}")
        self.last_timing = dict(reply.get("timing") or {})
        return {"actions": actions}

    def health(self) -> dict:
        return self._call({"type": "health"}, max(self.timeout_s, 1.0))


@dataclass
class RemoteBundle:
    """What the deploy node needs of a bundle, for a policy served elsewhere (pirl serve)."""

    path: str  # the server URL
    policy: RemotePolicy
    manifest: dict = field(default_factory=dict)

    @property
    def bundle_id(self) -> str:
        return self.policy.bundle_id

    @property
    def content_sha256(self) -> str:
        return self.policy.content_sha256


def open_remote_bundle(url: str, robot_spec: PolicySpec | None, token: str | None, timeout_s: float = 1.0,
                       tls_ca: str | None = None) -> RemoteBundle:
    """Connect to `pirl serve` at `url`; the served spec is checked against `robot_spec` by the server."""
    policy = RemotePolicy(url, token=token, robot_spec=robot_spec, timeout_s=timeout_s, tls_ca=tls_ca or None)
    return RemoteBundle(url, policy, {"bundle_id": policy.bundle_id, "content_sha256": policy.content_sha256,
                                      "served_by": url})


def open_policy_source(location: str, robot_spec: PolicySpec | None, device: str = "cpu",
                       token_env: str = "PIRL_SERVE_TOKEN", timeout_ms: float = 1000.0, tls_ca: str = ""):
    """The deploy node's `bundle` parameter: a bundle directory (loaded here) or remote://HOST:PORT (pirl serve).
    Either way a refusal is a BundleError that says why (unreachable server, wrong token, spec mismatch)."""
    import os

    from pirl_robot.bundle import BundleError, open_bundle

    if not is_remote(location):
        return open_bundle(location, robot_spec=robot_spec, device=device)
    try:
        return open_remote_bundle(location, robot_spec, os.environ.get(token_env) or None, timeout_ms / 1e3, tls_ca)
    except (RemotePolicyError, RemotePolicyTimeout, RemoteRequestError) as e:
        hint = f" (token from ${token_env})" if "401" in str(e) else ""
        raise BundleError(f"policy server {location}: {e}{hint}") from None
