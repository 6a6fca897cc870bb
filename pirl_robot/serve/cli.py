"""`pirl serve`: serve a policy bundle to robot computers without a GPU (the deploy node's `bundle:=remote://...`).

    export PIRL_SERVE_TOKEN=$(openssl rand -hex 16)                       # the same token on both machines
    pirl serve bundles/pushcube --host 0.0.0.0 --port 8765 --device cuda
    pirl serve bundles/pushcube --host 0.0.0.0 --tls-cert server.crt --tls-key server.key
    pirl serve bundles/pushcube --no-auth                                  # loopback only, no token
    pirl serve --health remote://gpu-box:8765                              # ask a running server how it is

On the robot: `pirl deploy --param deploy_node.bundle=remote://gpu-box:8765` with PIRL_SERVE_TOKEN set (docs/deploy.md).
Wire format and messages: pirl_robot/serve/protocol.py. Ctrl-C or SIGTERM stops the server.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from pirl_robot.serve.server import DEFAULT_MAX_MESSAGE_BYTES


def _ssl_context(cert: str | None, key: str | None):
    if not cert:
        return None
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pirl serve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", nargs="?", help="bundle directory (pirl export)")
    ap.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: every interface)")
    ap.add_argument("--port", type=int, default=8765, help="TCP port (0: any free port, printed on start)")
    ap.add_argument("--device", default="cpu", help="torch device of the policy (cuda on the GPU machine)")
    ap.add_argument("--token-env", default="PIRL_SERVE_TOKEN", help="environment variable holding the shared token")
    ap.add_argument("--no-auth", action="store_true", help="serve without a token (refused unless --host is loopback)")
    ap.add_argument("--tls-cert", help="PEM certificate: serve over TLS (wss; clients use remote+tls://)")
    ap.add_argument("--tls-key", help="PEM private key of --tls-cert")
    ap.add_argument("--max-message-mb", type=float, default=DEFAULT_MAX_MESSAGE_BYTES / 2**20,
                    help="larger messages close the connection (websocket close code 1009)")
    ap.add_argument("--health", metavar="URL", help="print the health of the server at URL and exit")
    ns = ap.parse_args(argv)
    token = None if ns.no_auth else os.environ.get(ns.token_env) or None
    if ns.health:
        from pirl_robot.serve.client import RemotePolicy, RemotePolicyError

        try:
            print(json.dumps(RemotePolicy(ns.health, token=token).health(), indent=2))
        except (RemotePolicyError, TimeoutError) as e:
            print(f"pirl serve: {e}", file=sys.stderr)
            return 1
        return 0
    if not ns.bundle:
        ap.error("give a BUNDLE to serve (or --health URL)")
    if token is None and not ns.no_auth:
        ap.error(f"set {ns.token_env} to the shared token (or --no-auth on a loopback host)")
    from pirl_robot.bundle import BundleError, open_bundle
    from pirl_robot.deploy.realtime import GIL_SWITCH_INTERVAL_S
    from pirl_robot.serve.server import PolicyServer

    # Each client has a receiving and a serving thread: hand the GIL over sooner than CPython's 5 ms default, as
    # the deploy node does (deploy/realtime.py).
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)

    try:
        bundle = open_bundle(ns.bundle, device=ns.device)
        server = PolicyServer(bundle, token, ns.host, ns.port, int(ns.max_message_mb * 2**20),
                              _ssl_context(ns.tls_cert, ns.tls_key)).start()
    except (BundleError, ValueError, OSError) as e:
        print(f"pirl serve: {e}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: server.shutdown())
    s = bundle.policy.spec
    print(f"pirl serve: bundle {bundle.bundle_id} ({bundle.policy.model_kind}, chunk {s.chunk_size}x{s.action_dim}) "
          f"on {'wss' if ns.tls_cert else 'ws'}://{ns.host}:{server.port} "
          f"({'token' if token else 'NO token'}{', TLS' if ns.tls_cert else ''})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
