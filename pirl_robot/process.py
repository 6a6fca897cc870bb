"""Child-process setup shared by everything that spawns helpers: deploy nodes (`pirl deploy --processes several`),
the recorder's commit worker, the simulators' vector-env workers, test drivers.

    subprocess.Popen(cmd, preexec_fn=die_with_parent_term)                        # a node: shut down cleanly
    ProcessPoolExecutor(1, initializer=die_with_parent)                           # a worker: just go
"""

from __future__ import annotations

import ctypes
import signal
import time

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """In a child: receive `sig` when its parent dies, however it dies (a kill -9 included), so no child outlives
    it. Linux ties this to the parent *thread*: spawn from a thread that lives as long as the children. Elsewhere
    a no-op (the children's pipes closing still ends the ones that read from their parent)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
    except (OSError, AttributeError):
        pass


def die_with_parent_term() -> None:
    """die_with_parent with SIGTERM: the child shuts down through its own handlers (a ROS node's clean exit)."""
    die_with_parent(signal.SIGTERM)


def wall_time() -> str:
    """The one timestamp format of session, episode and outcome records: local ISO 8601 with the UTC offset."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
