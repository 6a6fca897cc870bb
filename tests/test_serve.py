"""`pirl serve` and RemotePolicy over loopback: same actions as in-process, authentication, spec checks, clear
errors for malformed requests, 10,000 fuzzed messages, several clients, TLS, timeouts and a server restart."""

from __future__ import annotations

import re
import subprocess
import threading
import time

import msgpack
import numpy as np
import pytest

from deploy_utils import panda_spec, save_tiny_checkpoint
from pirl_robot.bundle import export_bundle, open_bundle
from pirl_robot.flow.rtc import ChunkPrefix
from pirl_robot.serve.client import RemotePolicy, RemotePolicyError, RemotePolicyTimeout, RemoteRequestError
from pirl_robot.serve.server import PolicyServer
from pirl_robot.serve.wire import pack, unpack
from pirl_robot.spec import CameraSpec

TOKEN = "test-token-0123"
SPEC = panda_spec(cameras=(CameraSpec("wrist", 16, 16),))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    return open_bundle(export_bundle(save_tiny_checkpoint(d / "ckpt", SPEC), d / "bundle"))


@pytest.fixture
def server(bundle):
    srv = PolicyServer(bundle, TOKEN, port=0, max_message_bytes=1 << 20, log=lambda m: None).start()
    yield srv
    srv.shutdown()


def url(srv) -> str:
    return f"remote://127.0.0.1:{srv.port}"


def observation(seed=0):
    rng = np.random.default_rng(seed)
    return {"state": rng.uniform(-1, 1, 9).astype(np.float32),
            "images": {"wrist": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)}}


def noise(seed=0):
    return np.random.default_rng(seed).standard_normal((SPEC.chunk_size, SPEC.action_dim)).astype(np.float32)


def test_remote_policy_answers_exactly_what_the_bundle_answers(server, bundle):
    remote = RemotePolicy(url(server), token=TOKEN, robot_spec=SPEC)
    assert remote.spec == bundle.policy.spec and remote.bundle_id == bundle.bundle_id
    for seed in range(3):
        got = remote.infer(observation(seed), noise=noise(seed))["actions"]
        np.testing.assert_array_equal(got, bundle.policy.infer(observation(seed), noise=noise(seed))["actions"])
    prefix = ChunkPrefix(got[4:], inference_delay=2, execution_horizon=4)  # real-time chunking over the wire
    np.testing.assert_array_equal(remote.infer(observation(), noise=noise(), prefix=prefix)["actions"],
                                  bundle.policy.infer(observation(), noise=noise(), prefix=prefix)["actions"])
    assert remote.last_timing["infer_ms"] > 0 and remote.last_timing["server_ms"] >= remote.last_timing["infer_ms"]
    health = remote.health()
    assert health["ok"] and health["requests"] == 4 and health["bundle_id"] == bundle.bundle_id
    remote.close()


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_clients_without_the_token_are_refused(server, token):
    with pytest.raises(RemotePolicyError, match="HTTP 401"):
        RemotePolicy(url(server), token=token)
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with pytest.raises(InvalidStatus):  # a plain websocket client gets no further either
        connect(f"ws://127.0.0.1:{server.port}", additional_headers={"Authorization": f"Bearer {token}"})
    assert server.health()["refused"] >= 2 and server.health()["connections"] == 0


def test_a_robot_that_does_not_fit_the_policy_is_refused_with_the_fields(server):
    other = panda_spec(cameras=(CameraSpec("wrist", 16, 16),), control_hz=50.0, robot="so101")
    with pytest.raises(RemoteRequestError, match=r"(?s)spec_mismatch.*robot.*control_hz") as err:
        RemotePolicy(url(server), token=TOKEN, robot_spec=other)
    assert err.value.code == "spec_mismatch"


def raw_client(srv):
    from websockets.sync.client import connect

    conn = connect(f"ws://127.0.0.1:{srv.port}", additional_headers={"Authorization": f"Bearer {TOKEN}"},
                   compression=None, legacy=True)
    assert unpack(conn.recv(timeout=5))["type"] == "hello"
    return conn


def ask(conn, data) -> dict:
    conn.send(data)
    return unpack(conn.recv(timeout=10))


def test_malformed_requests_get_clear_errors_and_the_connection_stays(server):
    conn = raw_client(server)
    good = {"type": "infer", "id": 1, "obs": observation(), "noise": noise()}
    cases = [
        (msgpack.packb([1, 2, 3]), "bad_message", "msgpack map"),
        (pack(good)[:-7], "bad_message", "not a valid msgpack"),
        ("text", "bad_message", "binary"),
        (pack({"type": "dance", "id": 2}), "bad_request", "unknown message type"),
        (pack({**good, "id": "one"}), "bad_request", "'id' must be an integer"),
        (pack({**good, "obs": {**observation(), "state": np.zeros(5, np.float32)}}), "observation", r"\(9,\)"),
        (pack({**good, "obs": {**observation(), "state": np.full(9, np.nan, np.float32)}}), "observation", "NaN"),
        (pack({**good, "obs": {**observation(), "state": [0.0] * 9}}), "bad_request", "float array"),
        (pack({**good, "obs": {"state": observation()["state"]}}), "observation", "lacks camera 'wrist'"),
        (pack({**good, "obs": {**observation(), "images": {"wrist": np.zeros((8, 8, 3), np.uint8)}}}),
         "observation", r"\(16, 16, 3\)"),
        (pack({**good, "noise": np.zeros((3, 3), np.float32)}), "bad_request", "noise has shape"),
        (pack({**good, "prefix": {"actions": np.zeros((4, 8), np.float32), "inference_delay": 9,
                                  "execution_horizon": 9}}), "bad_request", "inference_delay"),
    ]
    for data, code, words in cases:
        reply = ask(conn, data)
        assert reply["type"] == "error" and reply["code"] == code, (data[:40], reply)
        assert re.search(words, reply["message"]), reply["message"]
    reply = ask(conn, pack(good))
    assert reply["type"] == "result" and reply["id"] == 1 and reply["actions"].shape == (8, 8)
    conn.close()


def fuzz_messages(n: int, seed: int = 0):
    """n malformed messages: truncated, bit-flipped, wrong types, NaN, bad arrays, random bytes (seeded)."""
    rng = np.random.default_rng(seed)
    good = pack({"type": "infer", "id": 1, "obs": observation(), "noise": noise()})
    bad_arrays = [msgpack.ExtType(1, msgpack.packb(h)) for h in (
        ["float32", [10 ** 9], b""], ["object", [1], b"x"], ["float32", [-1], b""], ["float32", [2, 2], b"\0" * 3],
        ["float32", [1] * 9, b"\0" * 4], [1, 2], "x")] + [msgpack.ExtType(7, b"zz")]
    junk = [None, True, 3, -1.5, "x" * 50, b"\x00" * 10, [], [1, [2, [3]]], {}, np.float32(np.nan)]
    for i in range(n):
        kind = i % 6
        if kind == 0:
            yield good[: rng.integers(0, len(good))]
        elif kind == 1:
            b = bytearray(good)
            for j in rng.integers(0, len(b), 4):
                b[j] = int(rng.integers(0, 256))
            yield bytes(b)
        elif kind == 2:
            msg = {"type": "infer", "id": int(rng.integers(0, 99)), "obs": observation(),
                   "noise": noise()}
            path = ["type", "id", "obs", "noise"][rng.integers(0, 4)]
            msg[path] = junk[rng.integers(0, len(junk))]
            yield pack(msg)
        elif kind == 3:
            obs = observation()
            field = ("state", "images")[rng.integers(0, 2)]
            obs[field] = (np.full(9, np.nan, np.float32) if field == "state" else
                          {"wrist": np.full((16, 16, 3), np.inf, np.float32)})
            yield pack({"type": "infer", "id": 1, "obs": obs})
        elif kind == 4:
            arr = bad_arrays[rng.integers(0, len(bad_arrays))]
            yield msgpack.packb({"type": "infer", "id": 1, "obs": {"state": arr}}, use_bin_type=True)
        else:
            yield rng.integers(0, 256, rng.integers(1, 300), dtype=np.uint8).tobytes()


def test_ten_thousand_malformed_messages_leave_the_server_answering(server, bundle):
    conn = raw_client(server)
    t0 = time.monotonic()
    codes: dict[str, int] = {}
    messages = list(fuzz_messages(10_000))
    replies = []
    for i in range(0, len(messages), 32):  # pipelined: 32 messages out, then their 32 answers (in order)
        for data in messages[i:i + 32]:
            conn.send(data)
        replies += [unpack(conn.recv(timeout=10)) for _ in messages[i:i + 32]]
    for reply in replies:
        if reply["type"] == "error":
            codes[reply["code"]] = codes.get(reply["code"], 0) + 1
        else:  # a flipped byte can leave a valid request (e.g. another id or a slightly different state)
            codes["answered"] = codes.get("answered", 0) + 1
    # Oversized messages close that connection (websocket close 1009), not the server.
    from websockets.exceptions import ConnectionClosed

    big = raw_client(server)
    big.send(b"\0" * (2 << 20))
    with pytest.raises(ConnectionClosed) as closed:
        big.recv(timeout=10)
    assert closed.value.rcvd.code == 1009
    seconds = time.monotonic() - t0
    print(f"\nfuzz: 10,000 messages in {seconds:.1f} s; replies {codes}")
    assert sum(codes.values()) == 10_000 and codes["bad_message"] > 3000 and codes["observation"] > 1000
    remote = RemotePolicy(url(server), token=TOKEN, robot_spec=SPEC)
    np.testing.assert_array_equal(remote.infer(observation(), noise=noise())["actions"],
                                  bundle.policy.infer(observation(), noise=noise())["actions"])
    assert ask(conn, pack({"type": "health", "id": 5}))["ok"]
    conn.close()


def test_several_clients_at_once_each_get_their_own_answers(server, bundle):
    clients = [RemotePolicy(url(server), token=TOKEN) for _ in range(3)]
    got: dict[int, list] = {i: [] for i in range(3)}

    def run(i):
        for k in range(10):
            got[i].append(clients[i].infer(observation(10 * i + k), noise=noise(k))["actions"])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert server.health()["clients"] == 3
    for i in range(3):
        for k in range(10):
            want = bundle.policy.infer(observation(10 * i + k), noise=noise(k))["actions"]
            np.testing.assert_array_equal(got[i][k], want)


class SlowPolicy:
    """The bundle's policy with a switchable delay (a server whose GPU is stuck)."""

    def __init__(self, policy):
        self.policy, self.spec, self.model, self.model_kind = policy, policy.spec, policy.model, policy.model_kind
        self.noise_shape = policy.noise_shape
        self.delay_s = 0.0

    def infer(self, obs, noise=None, prefix=None):
        time.sleep(self.delay_s)
        return self.policy.infer(obs, noise=noise, prefix=prefix)


def test_a_slow_server_times_out_and_the_next_call_reconnects(bundle):
    import dataclasses

    slow = SlowPolicy(bundle.policy)
    srv = PolicyServer(dataclasses.replace(bundle, policy=slow), TOKEN, port=0, log=lambda m: None).start()
    try:
        remote = RemotePolicy(url(srv), token=TOKEN, timeout_s=0.2)
        lost = []
        remote.on_lost = lost.append
        slow.delay_s = 0.5
        t = time.monotonic()
        with pytest.raises(RemotePolicyTimeout):
            remote.infer(observation(), noise=noise())
        assert time.monotonic() - t < 0.45 and not remote.connected and not lost  # dropped by us, not lost
        slow.delay_s = 0.0
        time.sleep(0.5)  # the server is still in the slow call (one forward at a time)
        np.testing.assert_array_equal(remote.infer(observation(), noise=noise())["actions"],
                                      bundle.policy.infer(observation(), noise=noise())["actions"])
        assert remote.reconnects == 1
    finally:
        srv.shutdown()


def test_a_restarted_server_is_reconnected_and_another_bundle_refused(bundle, tmp_path):
    srv = PolicyServer(bundle, TOKEN, port=0, log=lambda m: None).start()
    port = srv.port
    remote = RemotePolicy(url(srv), token=TOKEN)
    lost = threading.Event()
    remote.on_lost = lambda why: lost.set()
    remote.infer(observation(), noise=noise())
    srv.shutdown()
    assert lost.wait(5), "the client did not notice the server going away"
    with pytest.raises(RemotePolicyError, match="cannot reach"):
        remote.infer(observation(), noise=noise())
    srv = PolicyServer(bundle, TOKEN, port=port, log=lambda m: None).start()
    try:
        assert remote.infer(observation(), noise=noise())["actions"].shape == (8, 8)
    finally:
        srv.shutdown()
    other = open_bundle(export_bundle(save_tiny_checkpoint(tmp_path / "ckpt", SPEC, seed=5), tmp_path / "b"))
    srv = PolicyServer(other, TOKEN, port=port, log=lambda m: None).start()
    try:
        with pytest.raises(RemotePolicyError, match="now serves bundle"):
            remote.infer(observation(), noise=noise())
    finally:
        srv.shutdown()


def test_tls_with_the_servers_certificate_only(bundle, tmp_path):
    import ssl

    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                    str(cert)], check=True, capture_output=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv = PolicyServer(bundle, TOKEN, port=0, ssl_context=ctx, log=lambda m: None).start()
    try:
        tls_url = f"remote+tls://127.0.0.1:{srv.port}"
        remote = RemotePolicy(tls_url, token=TOKEN, tls_ca=str(cert))
        np.testing.assert_array_equal(remote.infer(observation(), noise=noise())["actions"],
                                      bundle.policy.infer(observation(), noise=noise())["actions"])
        with pytest.raises(RemotePolicyError, match="CERTIFICATE_VERIFY_FAILED"):
            RemotePolicy(tls_url, token=TOKEN)  # the system's CAs do not know a self-signed certificate
        with pytest.raises(RemotePolicyError):
            RemotePolicy(url(srv), token=TOKEN)  # plain websocket to a TLS server
    finally:
        srv.shutdown()


def test_a_server_reachable_from_other_machines_needs_a_token(bundle):
    with pytest.raises(ValueError, match="needs a token"):
        PolicyServer(bundle, None, host="0.0.0.0", port=0)


def test_a_server_gone_silent_is_found_by_the_keepalive(bundle):
    """A server that stops answering without closing (a frozen process, a pulled cable) is reported lost within
    about two keepalive intervals (max(1 s, timeout)), between requests, with no request in flight."""
    import socket

    from pirl_robot.serve.connection import ServerConnection

    listener = socket.create_server(("127.0.0.1", 0))
    hello = pack(PolicyServer(bundle, TOKEN, port=0).hello())
    stop = threading.Event()

    def silent_server():
        sock, _ = listener.accept()
        conn = ServerConnection.accept(sock, lambda request: None, 1 << 20)
        conn.send(hello)
        stop.wait(10)  # never reads again: the client's pings go unanswered
        conn.close()

    threading.Thread(target=silent_server, daemon=True).start()
    remote = RemotePolicy(f"remote://127.0.0.1:{listener.getsockname()[1]}", token=TOKEN, timeout_s=0.3)
    lost, why = threading.Event(), []
    remote.on_lost = lambda reason: (why.append(reason), lost.set())
    t0 = time.monotonic()
    try:
        assert lost.wait(5), "the keepalive did not find the silent server"
        assert 1.0 <= time.monotonic() - t0 <= 3.5 and "keepalive ping" in why[0] and not remote.connected
    finally:
        stop.set()
        listener.close()
