"""Operator keys for `pirl deploy` on a terminal: e-stop, reset, start and stop, one key each.

    e or space   e-stop: latches, cancels the active command at once     r   reset the e-stop
    s            start executing the policy                               x   stop (brakes within limits)
    y / n        the episode succeeded / failed (recorded: ~/episode_outcome, docs/record_replay.md)
    h            this help                                                Ctrl-C quits

Keys go to the deploy node's own services (~/estop, ~/reset_estop, ~/start, ~/stop), the ones any operator panel
uses, so they work the same whether the node runs in this process or in another one, and every press is
answered by the node itself ("e-stop latched") or reported as not reaching it. Only on a terminal: the runner
switches stdin to unbuffered key reading (Ctrl-C keeps working) and restores it on exit.
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time

KEYS = {"e": "estop", " ": "estop", "r": "reset_estop", "s": "start", "x": "stop"}
OUTCOME_KEYS = {"y": True, "n": False}  # std_srvs/SetBool on ~/episode_outcome (the recorder, record/ros.py)
HELP = "keys: e/space e-stop | r reset e-stop | s start | x stop | y/n episode success/failure | h help | Ctrl-C quit"


class OperatorKeys:
    def __init__(self, node, deploy_node: str = "/deploy_node", fd: int | None = None, out=None,
                 timeout_s: float = 5.0):
        from std_srvs.srv import Trigger

        self.node, self.timeout_s = node, timeout_s
        self.fd = sys.stdin.fileno() if fd is None else fd
        self.out = out or sys.stderr
        self.clients = {s: node.create_client(Trigger, f"{deploy_node}/{s}") for s in set(KEYS.values())}
        from std_srvs.srv import SetBool

        self.clients["episode_outcome"] = node.create_client(SetBool, f"{deploy_node}/episode_outcome")
        self._stop = threading.Event()
        self._saved = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        import termios
        import tty

        self._saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)  # one key at a time, no echo; Ctrl-C still raises KeyboardInterrupt
        self._thread = threading.Thread(target=self._loop, name="operator-keys", daemon=True)
        self._thread.start()
        self.say(HELP)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if self._saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def say(self, text: str) -> None:
        print(f"[operator] {text}", file=self.out, flush=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if not ready:
                continue
            data = os.read(self.fd, 32)
            if not data:
                return  # the terminal went away
            for key in data.decode(errors="ignore").lower():
                self.press(key)

    def press(self, key: str) -> None:
        if key in ("h", "?"):
            self.say(HELP)
            return
        service = KEYS.get(key) or ("episode_outcome" if key in OUTCOME_KEYS else None)
        if service is None:
            return
        ok, message = self.call(service, OUTCOME_KEYS.get(key))
        self.say(f"{service}: {message}" if ok else f"{service} FAILED: {message}")

    def call(self, service: str, data: bool | None = None) -> tuple[bool, str]:
        from std_srvs.srv import SetBool, Trigger

        client = self.clients[service]
        if not client.service_is_ready() and not client.wait_for_service(timeout_sec=1.0):
            return False, f"{client.srv_name} is not available (is the deploy node running, recording?)"
        future = client.call_async(Trigger.Request() if data is None else SetBool.Request(data=data))
        deadline = time.monotonic() + self.timeout_s
        while not future.done():
            if time.monotonic() > deadline:
                return False, f"{client.srv_name} did not answer within {self.timeout_s:.0f} s"
            time.sleep(0.002)
        res = future.result()
        return bool(res.success), res.message
