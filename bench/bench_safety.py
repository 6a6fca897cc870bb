"""Per-tick latency of the safety layer (the budget at 50 Hz is 20 ms per tick for everything).

    .venv/bin/python bench/bench_safety.py                 # ~10 s, prints a table
    .venv/bin/python bench/bench_safety.py --ticks 20000 --torch-threads 4

Scenarios, all on configs/robot/panda.yaml while RUNNING, the policy tracing a 0.5 Hz sine on every joint:
  no workspace     the filter without the FK box check (numpy only)
  workspace        the box check of the command and its braking stop: FK (one batched pytorch_kinematics call)
                   only where the reach bound cannot prove the end effector inside (safety/workspace.py)
  workspace edge   the target dips through the box floor: candidates are scaled back (up to two FK calls)
  supervisor       watchdog check + filter with the workspace check (what the deploy node calls)
  ... FK always    the same with the reach bound switched off: FK on every tick (the filter before the bound)
The FK column is the number of pytorch_kinematics calls per tick.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from pirl_robot.safety import Mode, SafetyFilter, SafetySupervisor, load_safety_config
from pirl_robot.safety.workspace import WorkspaceCheck

ROOT = Path(__file__).resolve().parents[1]
REST = np.array([0.0, np.pi / 8, 0.0, -np.pi * 5 / 8, 0.0, np.pi * 3 / 4, np.pi / 4, 1.0])
DOWN = np.array([0.0, 0.8, 0.0, -1.9, 0.0, np.pi * 3 / 4, np.pi / 4, 1.0])  # end effector below the box floor
HZ, T = 50.0, 0.02


def sine_target(k: int) -> np.ndarray:
    """A policy moving every joint at up to 0.4 rad/s, end effector well inside the box."""
    return REST + np.r_[0.15 * np.sin(2 * np.pi * 0.4 * k * T) * np.ones(7), 0.0]


def edge_target(k: int) -> np.ndarray:
    return REST + (DOWN - REST) * (0.5 + 0.6 * np.sin(2 * np.pi * 0.25 * k * T))


def time_ticks(step, target, ticks: int) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Wall time and this thread's CPU time per tick (us): on a shared machine the CPU time leaves out the
    time the thread waited for a core, so its tail shows the filter's own worst case."""
    lat, cpu, causes = np.empty(ticks), np.empty(ticks), {}
    for k in range(ticks):
        raw = target(k)
        t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        out = step(raw)
        lat[k], cpu[k] = (time.perf_counter_ns() - t0) / 1e3, (time.thread_time_ns() - c0) / 1e3
        for e in out.events:
            causes[e.cause] = causes.get(e.cause, 0) + 1
        if out.mode != Mode.RUNNING:
            raise RuntimeError(f"left RUNNING ({out.mode}) at tick {k}: {[(e.cause, e.detail) for e in out.events]}")
    return lat, cpu, causes


def running_filter(cfg, fk=None, use_bound: bool = True) -> SafetyFilter:
    f = SafetyFilter(cfg, HZ, fk=fk)
    if not use_bound:
        f.workspace = WorkspaceCheck(f.fk, cfg.workspace.min, cfg.workspace.max, use_bound=False)
    f.resume()
    for _ in range(500):
        if f.step(REST, REST, T).mode == Mode.RUNNING:
            return f
    raise RuntimeError("did not start")


class FreshInputs:
    """Keeps every watchdog input fresh, as a live deploy node would."""

    def __init__(self, sup: SafetySupervisor):
        self.sup = sup

    def __call__(self, raw):
        w = self.sup.watchdog
        w.camera_frame("wrist"), w.joint_state(), w.policy_finished()
        measured = self.sup.filter.command
        return self.sup.step(raw, REST if measured is None else measured, T)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ticks", type=int, default=3000)
    ap.add_argument("--torch-threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.torch_threads)

    cfg = load_safety_config(ROOT / "configs" / "robot" / "panda.yaml")
    no_ws = dataclasses.replace(cfg, workspace=None)
    t0 = time.perf_counter()
    fk = SafetyFilter(cfg, HZ).fk
    build_ms = (time.perf_counter() - t0) * 1e3

    sup = SafetySupervisor(cfg, HZ, cameras=["wrist"], fk=fk)
    FreshInputs(sup)(REST)
    sup.watchdog.driver_connected(True)
    assert sup.resume()[0], sup.resume()
    for _ in range(500):
        if FreshInputs(sup)(REST).mode == Mode.RUNNING:
            break

    def on(f: SafetyFilter):
        return f, lambda raw: f.step(raw, f.command, T)

    rows = []
    for name, (filt, step), target in [
        ("no workspace", on(running_filter(no_ws)), sine_target),
        ("workspace", on(running_filter(cfg, fk)), sine_target),
        ("workspace edge", on(running_filter(cfg, fk)), edge_target),
        ("supervisor", (sup.filter, FreshInputs(sup)), sine_target),
        ("workspace, FK always", on(running_filter(cfg, fk, use_bound=False)), sine_target),
        ("edge, FK always", on(running_filter(cfg, fk, use_bound=False)), edge_target),
    ]:
        time_ticks(step, target, 200)  # warm-up
        calls0 = filt.workspace.fk_calls if filt.workspace else 0
        lat, cpu, causes = time_ticks(step, target, args.ticks)
        calls = (filt.workspace.fk_calls - calls0) / args.ticks if filt.workspace else 0.0
        top = ", ".join(f"{c} {n}" for c, n in sorted(causes.items(), key=lambda x: -x[1])[:2]) or "-"
        rows.append((name, *np.percentile(lat, [50, 99]), lat.max(), *np.percentile(cpu, [50, 99]), calls, top))

    print(f"safety layer per-tick latency, {args.ticks} ticks each, torch threads {torch.get_num_threads()}, "
          f"FK chain build {build_ms:.0f} ms (once); wall clock and thread CPU time, us")
    print(f"{'scenario':<22}{'p50':>7}{'p99':>7}{'max':>7}{'cpu p50':>9}{'cpu p99':>9}{'FK/tick':>9}  events")
    for name, p50, p99, mx, c50, c99, calls, top in rows:
        print(f"{name:<22}{p50:>7.0f}{p99:>7.0f}{mx:>7.0f}{c50:>9.0f}{c99:>9.0f}{calls:>9.2f}  {top}")


if __name__ == "__main__":
    main()
