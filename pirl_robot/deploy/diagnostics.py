"""The deploy node's state and timing as diagnostic_msgs (what rqt_runtime_monitor and diagnostic aggregators read)."""

from __future__ import annotations

from typing import Any


def status_name(node_name: str) -> str:
    """The DiagnosticStatus name of a deploy node's status (what readers of /diagnostics match on)."""
    return f"pirl_deploy: {node_name}"


def diagnostic_array(name: str, values: dict[str, Any], filtered: bool, executing: bool, stamp):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    status = DiagnosticStatus(name=name, hardware_id=str(values.get("bundle", "")))
    status.level = DiagnosticStatus.OK if filtered else DiagnosticStatus.WARN
    status.message = ("executing" if executing else "holding") + ("" if filtered else
                                                                  "; NO safety filter (unfiltered pass-through)")
    status.values = [KeyValue(key=k, value=f"{v:.3f}" if isinstance(v, float) else str(v)) for k, v in values.items()]
    msg = DiagnosticArray(status=[status])
    msg.header.stamp = stamp
    return msg
