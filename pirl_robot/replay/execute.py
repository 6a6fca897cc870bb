"""Re-execute a recorded episode's commands on an arm, through the safety filter, at the recorded rate.

The commands (the applied ones by default, or the raw policy actions) go through the same safety stage the deploy
node uses (deploy/safety_hook.py: pirl_robot.safety's supervisor, or `unfiltered`), with the watchdog watching the
joint states and the driver only: there is no policy and no camera in the loop. Any Arm works: the in-process
ManiSkill Panda (reset to the recorded seed), or a ROS 2 arm (the sim arm node, a ros2_control arm).
At the end the filter brings the arm to rest. The result compares the joints reached with the recorded ones.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from pirl_robot.drivers.arms.base import StaleStateError
from pirl_robot.record.episodes import RecordedEpisode


@dataclass
class Execution:
    commands: int                       # ticks with a command to re-execute
    sent: int                           # commands the arm accepted
    measured: np.ndarray                # (N, J) joint positions each tick started from (schema joint order)
    recorded: np.ndarray                # (N, J) the recorded joint positions of the same rows
    joint_names: tuple[str, ...]
    events: list[dict] = field(default_factory=list)
    modified: int = 0                   # ticks where the filter changed the command
    safety: str = ""
    sent_commands: np.ndarray | None = None  # (sent, C) what the arm was sent, command units, in order
    stale_ticks: int = 0                # ticks whose joint state was too old (the safety stage held)

    def tracking(self) -> list[dict]:
        """Per joint: how far the re-executed trajectory is from the recorded one (same rows)."""
        d = self.measured - self.recorded
        return [{"joint": n, "max_abs": float(np.abs(d[:, j]).max()), "rms": float(np.sqrt((d[:, j] ** 2).mean()))}
                for j, n in enumerate(self.joint_names)]

    def markdown(self) -> str:
        causes: dict[str, int] = {}
        for e in self.events:
            causes[e.get("cause", "")] = causes.get(e.get("cause", ""), 0) + 1
        lines = [f"re-executed {self.commands} commands ({self.sent} sent) through {self.safety}; the filter changed "
                 f"{self.modified}; stale joint states: {self.stale_ticks}; events: {causes or 'none'}", "",
                 "| joint | max abs vs recorded | RMS |",
                 "|---|---|---|"]
        lines += [f"| {r['joint']} | {r['max_abs']:.4g} | {r['rms']:.4g} |" for r in self.tracking()]
        return "\n".join(lines)


class _Stamp:
    def __init__(self, stamp: float):
        self.stamp = stamp


def replay_safety_stage(safety_config: str, spec, command_map):
    """The deploy node's safety stage for re-execution: no policy and no cameras to watch."""
    from pirl_robot.deploy.safety_hook import UNFILTERED, SupervisedSafety, UnfilteredPassThrough, resolve_path

    if safety_config == UNFILTERED:
        return UnfilteredPassThrough(command_map)
    from pirl_robot.safety import SafetySupervisor, load_safety_config

    cfg = load_safety_config(resolve_path(safety_config), spec=spec)
    sup = SafetySupervisor(cfg, spec.control_hz, watch=("joint_states", "driver"))
    return SupervisedSafety(sup, command_map, str(safety_config))


def execute_episode(episode: RecordedEpisode, arm, safety_config: str, source: str = "applied",
                    step: Callable[[], None] | None = None, realtime: bool = True, max_state_age_ms: float = 500.0,
                    settle_s: float = 2.0, log=print) -> Execution:
    """Send the episode's commands to `arm` (connected) through the safety filter.

    step: called after each command (an in-process simulated arm advances one control period); realtime: pace
    the ticks at the recorded control rate (an arm with its own clock needs it)."""
    from pirl_robot.deploy.robot import CommandMap
    from pirl_robot.spec import PolicySpec

    if source not in ("applied", "policy"):
        raise ValueError("source must be 'applied' (what the robot was sent) or 'policy' (raw policy actions)")
    schema = episode.schema
    spec = PolicySpec.from_dict(episode.meta["spec"])
    cmap = CommandMap(schema.command_names, np.asarray(schema.command_scale or [1.0] * len(schema.command_names)),
                      np.asarray(schema.command_offset or [0.0] * len(schema.command_names)))
    stage = replay_safety_stage(safety_config, spec, cmap)
    c = episode.columns()
    valid = c["command.sent"] if source == "applied" else c["action.valid"]
    rows = np.flatnonzero(valid)
    actions = schema.command_to_action(c["command.applied"][rows]) if source == "applied" else c["action"][rows]
    period = 1.0 / spec.control_hz
    stage.driver(True)
    ok, why = stage.resume()
    if not ok:
        raise RuntimeError(f"the safety filter refused to start: {why}")
    measured, events, sent, modified, sent_commands, stale = [], [], 0, 0, [], 0
    last = None
    next_t = time.monotonic()

    def tick(action):
        nonlocal sent, modified, last, stale
        fault = None
        try:
            joints = arm.read_state(float("inf") if step is not None else max_state_age_ms)
            if step is not None:  # an arm this loop steps itself is as fresh as it gets, however long ago it moved
                joints = dataclasses.replace(joints, stamp=time.monotonic())
            stage.observed(joints, {})
        except StaleStateError as e:  # as on the robot: the safety stage holds this tick
            fault, joints, stale = e, arm.latest(), stale + 1
            if joints is None:
                raise
        now = time.monotonic()
        dt = None if last is None or not realtime else now - last  # unpaced: the tick timing check is moot
        out = stage.step(action, joints, fault, dt)
        last = now
        events.extend(out.events)
        if out.command is not None:
            arm.send(out.command)
            sent_commands.append(np.asarray(out.command, dtype=np.float64))
            sent += 1
            if action is not None and not np.allclose(out.command, cmap(action), atol=1e-9):
                modified += 1
        if step is not None:
            step()
        return out, joints

    for a in actions:
        if realtime:
            next_t += period
            time.sleep(max(0.0, next_t - time.monotonic()))
        _, joints = tick(np.asarray(a, dtype=np.float64))
        measured.append(joints.pick(schema.joint_names))  # what the tick saw, as recorded
    stage.stop()
    deadline = time.monotonic() + settle_s
    for _ in range(int(settle_s / period)):  # the controlled stop
        if time.monotonic() > deadline:
            break
        if realtime:
            time.sleep(period)
        if tick(None)[0].mode in ("stopped", "pass", "idle"):
            break
    events.extend(stage.drain_events())
    recorded = c["observation.joints.position"][rows].astype(np.float64)
    return Execution(len(rows), sent, np.asarray(measured), recorded, schema.joint_names, events, modified,
                     stage.name, np.asarray(sent_commands).reshape(-1, len(schema.command_names)), stale)


def maniskill_arm(episode: RecordedEpisode, task: str | None = None):
    """The simulated Panda in this process, reset to the recorded episode's seed: (arm, step function)."""
    from pirl_robot.drivers.arms.maniskill_arm import ManiSkillArm
    from sim.maniskill.config import TaskConfig

    sim = episode.meta.get("sim") or {}
    task = task or sim.get("task") or "PushCube-v1"
    arm = ManiSkillArm(TaskConfig(task=task, obs_mode="state"))
    arm.connect()
    arm.reset(sim.get("seed"))
    return arm, arm.step
