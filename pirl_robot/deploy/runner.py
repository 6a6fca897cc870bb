"""`pirl deploy`: start the deploy node and the configured drivers without `ros2 launch` (no launch package in
the ROS 2 wheels), from the same launch-argument table, node plan and parameter files as deploy.launch.py.

    pirl deploy --bundle bundles/pushcube                          # sim arm + deploy node, one process
    pirl deploy --bundle bundles/pushcube --processes several      # one process per node, like ros2 launch
    pirl deploy --bundle b --arm none --config /path/my_robot.yaml # an arm already on ROS (ros2_control)
    pirl deploy --bundle b --start                                 # also start executing the policy at once
    pirl deploy --bundle b --param deploy_node.seed=3              # override a parameter of one node

On a terminal, keys drive the deploy node (operator_keys.py): e or space e-stop, r reset it, s start, x stop.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import yaml

from pirl_robot.deploy.plan import EXECUTABLES, LAUNCH_ARGUMENTS, NodePlan, default_config_dir, plan_nodes
from pirl_robot.process import die_with_parent_term


def ensure_ros_env() -> None:
    """The ROS 2 wheels ship only Fast DDS; choose it before rclpy loads (no sourced setup file needed)."""
    os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def init_ros(args: list[str] | None = None) -> None:
    """rclpy.init without rclpy's signal handlers: SIGINT and SIGTERM raise KeyboardInterrupt in the main thread,
    so the nodes stop their control loops (shutdown_nodes) while the context is still valid, and only then does
    the context shut down. rclpy's own handler shuts the context down at the signal, under a control tick that
    may be publishing ("control tick failed: RCLError ... publisher's context is invalid")."""
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def load_node_params(params_file: str, node_name: str) -> dict:
    """The ros__parameters of one node from a ROS 2 parameter file ('/**' wildcard sections merged first)."""
    data = yaml.safe_load(Path(params_file).read_text()) or {}
    out: dict = {}
    for key in ("/**", node_name, f"/{node_name}"):
        section = data.get(key) or {}
        out.update(section.get("ros__parameters") or {})
    return out


def _load(target: str):
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def make_node(plan: NodePlan, context=None):
    from pirl_robot.deploy.params import ros_parameters

    values = {**load_node_params(plan.params_file, plan.name), **plan.overrides}
    cls = _load(EXECUTABLES[plan.executable][1])
    return cls(plan.name, parameter_overrides=ros_parameters(values), context=context)


def bring_up(node) -> None:
    """Lifecycle nodes with activate_on_start: configure + activate (what a lifecycle manager would do)."""
    from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn

    if isinstance(node, LifecycleNode) and node.values.get("activate_on_start", True):
        if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            raise RuntimeError(f"{node.get_name()}: configure failed (see the log above)")
        if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            raise RuntimeError(f"{node.get_name()}: activate failed")


def make_executor(nodes: list, context=None):
    """The executor the nodes' `executor` parameter asks for (deploy/params.py): rclpy's C++ EventsExecutor when
    any node wants 'events', else a MultiThreadedExecutor."""
    from rclpy.executors import MultiThreadedExecutor

    if any(getattr(n, "values", {}).get("executor") == "events" for n in nodes):
        from rclpy.experimental import EventsExecutor

        for n in nodes:  # one thread: callbacks must not block (the deploy node's ~/stop then does not wait)
            n.blocking_callbacks_allowed = False
        return EventsExecutor(context=context)
    return MultiThreadedExecutor(num_threads=max(2, 2 * len(nodes)), context=context)


def spin(nodes: list, stop: threading.Event | None = None) -> None:
    import rclpy

    executor = make_executor(nodes)
    for n in nodes:
        executor.add_node(n)
    try:
        while rclpy.ok() and not (stop and stop.is_set()):
            try:
                executor.spin_once(timeout_sec=0.1)
            except Exception:
                if rclpy.ok():
                    raise
                break  # SIGTERM/SIGINT: rclpy's signal handler shut the context down under the executor
    finally:
        executor.shutdown()


def shutdown_nodes(nodes: list) -> None:
    for n in reversed(nodes):
        n.destroy_node()  # the deploy node stops its control loop and releases its drivers first


def spin_nodes(classes: list[tuple[str, type]], argv: list[str] | None = None) -> int:
    """Console-script main for one or more node classes (parameters from --ros-args as usual)."""
    ensure_ros_env()
    import rclpy
    from rclpy.executors import ExternalShutdownException

    init_ros(sys.argv if argv is None else ["node", *argv])
    nodes = []
    try:
        nodes = [cls(name) for name, cls in classes]
        for n in nodes:
            bring_up(n)
        spin(nodes)
    except (KeyboardInterrupt, ExternalShutdownException):  # Ctrl-C or SIGTERM (init_ros), or a context shut down
        pass
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        shutdown_nodes(nodes)
        if rclpy.ok():
            rclpy.shutdown()
    return 0


def operator_keys(plans: list[NodePlan]):
    """The terminal's keys for the deploy node of the plan (operator_keys.py): (node to spin, keys)."""
    from rclpy.node import Node

    from pirl_robot.deploy.operator_keys import OperatorKeys

    node = Node("operator_keys")
    deploy = next(p.name for p in plans if p.executable == "deploy_node")
    return node, OperatorKeys(node, f"/{deploy}")


def run_in_process(plans: list[NodePlan], start: bool, stop: threading.Event | None = None,
                   keys: bool = False) -> int:
    ensure_ros_env()
    import rclpy
    from rclpy.executors import ExternalShutdownException

    init_ros()
    nodes, console = [], None
    try:
        nodes = [make_node(p) for p in plans]
        for n in nodes:
            bring_up(n)
        if start:
            nodes[-1].start_policy()
        if keys:
            key_node, console = operator_keys(plans)
            nodes.append(key_node)
            console.start()
        spin(nodes, stop)
    except (KeyboardInterrupt, ExternalShutdownException):  # Ctrl-C or SIGTERM (init_ros), or a context shut down
        pass
    finally:
        if console is not None:
            console.close()
        shutdown_nodes(nodes)
        if rclpy.ok():
            rclpy.shutdown()
    return 0


def node_command(plan: NodePlan, overrides_file: str, log_level: str) -> list[str]:
    """The command line that runs one planned node in its own process (what ros2 launch would run)."""
    module, _, func = EXECUTABLES[plan.executable][0].partition(":")
    code = f"import sys; from {module} import {func} as m; sys.exit(m(sys.argv[1:]))"
    return [sys.executable, "-c", code, "--ros-args", "-r", f"__node:={plan.name}", "--params-file",
            plan.params_file, "--params-file", overrides_file, "--log-level", log_level]


def run_processes(plans: list[NodePlan], log_level: str, start: bool, keys: bool = False) -> int:
    ensure_ros_env()
    procs: list[subprocess.Popen] = []
    console = keys_stop = None
    if keys:  # the keys talk to the deploy node's services from this process
        import rclpy

        rclpy.init()
        key_node, console = operator_keys(plans)
        keys_stop = threading.Event()
        threading.Thread(target=spin, args=([key_node], keys_stop), daemon=True).start()
        console.start()

    def stop_children(signum=None, frame=None):
        for pr in procs:
            if pr.poll() is None:
                pr.send_signal(signal.SIGINT)
        for pr in procs:
            try:
                pr.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pr.kill()
        if signum is not None:
            raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop_children)
    with tempfile.TemporaryDirectory(prefix="pirl-deploy-") as tmp:
        try:
            for p in plans:
                f = Path(tmp) / f"{p.name}.yaml"
                f.write_text(yaml.safe_dump({p.name: {"ros__parameters": {**p.overrides, **(
                    {"autostart": True} if start and p.executable == "deploy_node" else {})}}}))
                procs.append(subprocess.Popen(node_command(p, str(f), log_level), preexec_fn=die_with_parent_term))
            codes = [pr.wait() for pr in procs]
        except KeyboardInterrupt:
            stop_children()
            codes = [pr.returncode for pr in procs]
        finally:
            signal.signal(signal.SIGTERM, previous)
            if console is not None:
                console.close()
                keys_stop.set()
                rclpy.try_shutdown()
    return max((c for c in codes if c is not None), default=0)


def apply_params(plans: list[NodePlan], items: list[str]) -> list[NodePlan]:
    """'node.name=value' overrides (value parsed as YAML: 3, 0.5, true, [a, b]) on top of the parameter files."""
    extra: dict[str, dict] = {}
    for item in items:
        key, sep, value = item.partition("=")
        node, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise ValueError(f"--param {item!r}: expected NODE.NAME=VALUE")
        extra.setdefault(node, {})[name] = yaml.safe_load(value)
    unknown = set(extra) - {p.name for p in plans}
    if unknown:
        raise ValueError(f"--param for {sorted(unknown)}: no such node in the plan {[p.name for p in plans]}")
    return [NodePlan(p.executable, p.name, p.params_file, {**p.overrides, **extra.get(p.name, {})}) for p in plans]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pirl deploy", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    for a in LAUNCH_ARGUMENTS:
        ap.add_argument(f"--{a.name.replace('_', '-')}", dest=a.name, default=a.default, help=a.description)
    ap.add_argument("--config-dir", default=str(default_config_dir()), help="Where config names are looked up.")
    ap.add_argument("--processes", choices=("one", "several"), default="one",
                    help="All nodes in this process, or one process per node (as ros2 launch does).")
    ap.add_argument("--start", action="store_true", help="Start executing the policy once active.")
    ap.add_argument("--param", action="append", default=[], metavar="NODE.NAME=VALUE",
                    help="Override one node parameter (repeatable).")
    ap.add_argument("--print-plan", action="store_true", help="Print the nodes and parameter files, then exit.")
    ap.add_argument("--no-keys", action="store_true",
                    help="Do not read operator keys (e-stop etc.) from the terminal (they are on by default when "
                         "stdin is a terminal).")
    ns = ap.parse_args(argv)
    plans = plan_nodes({a.name: getattr(ns, a.name) for a in LAUNCH_ARGUMENTS}, ns.config_dir)
    plans = apply_params(plans, ns.param)
    if ns.print_plan:
        for p in plans:
            print(f"{p.executable:18s} name={p.name} params={p.params_file} overrides={p.overrides}")
        return 0
    keys = not ns.no_keys and sys.stdin.isatty()
    if ns.processes == "several":
        return run_processes(plans, ns.log_level, ns.start, keys)
    return run_in_process(plans, ns.start, keys=keys)


if __name__ == "__main__":
    sys.exit(main())
