"""Real-time hygiene for the control process.

Page faults are the largest latency source of a Python control loop on a machine that reclaims memory in the
background (a kernel doing proactive reclaim, e.g. DAMON, evicts the interpreter's and torch's code pages; the
next tick that touches them waits on the disk). ros2_control and the ROS 2 real-time guides lock memory with
mlockall for this reason. MCL_ONFAULT locks pages as they are first touched instead of populating every mapping
up front, so torch's large virtual reservations cost nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4
# The executor, the inference thread and the control loop share one GIL; CPython's default 5 ms switch interval
# lets a busy thread hold it for several ticks' worth of overhead budget.
GIL_SWITCH_INTERVAL_S = 0.0005


def prepare_process(torch_threads: int, lock: bool) -> list[str]:
    """Apply the deploy process's real-time settings; returns warnings for what could not be applied."""
    import torch

    torch.set_num_threads(policy_threads(torch_threads))
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    reason = lock_memory() if lock else None
    return [f"lock_memory: {reason}; control ticks may stall on page faults"] if reason else []


def lock_memory() -> str | None:
    """Keep this process's pages resident. Returns None on success, else the reason it could not (the caller
    warns and runs on: a locked process is better, an unlocked one still works)."""
    if not sys.platform.startswith("linux"):
        return "memory locking is only implemented on Linux"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) != 0:
        err = ctypes.get_errno()
        hint = " (raise RLIMIT_MEMLOCK, e.g. `ulimit -l unlimited`, or grant CAP_IPC_LOCK)" if err in (1, 12) else ""
        return f"mlockall failed: {os.strerror(err)}{hint}"
    return None


def policy_threads(requested: int) -> int:
    """Intra-op threads for the policy forward: `requested`, or all cores this process may use but one."""
    if requested > 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)
