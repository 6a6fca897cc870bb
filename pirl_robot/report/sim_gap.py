"""Sim-real gap: recorded episodes' applied commands re-executed in the simulated twin, compared joint by joint.

    pirl report recordings/SESSION --sim-gap                          # -> recordings/SESSION/report/sim_gap.md
    pirl report recordings/SESSION --sim-gap --inject-delay-ticks 2   # check the report: the "real" arm lags

For each episode: the twin (ManiSkill's Panda, the episode's task; reset to the recorded seed when the episode
came from the simulated arm, and always set to the recorded initial joint positions) is sent the commands the
robot was sent (`command.applied` where `command.sent`), open loop, one per control period, in order. Row t of
the twin is the state each command was computed from, as in the recording, so a perfect twin gives the
recorded joints. Per joint: tracking RMSE and largest deviation (rad), and the lag (ms): the shift of the real
trajectory against the twin's, in control periods, that fits best (positive: the real arm is behind).
Per episode: a PNG of real vs twin joint trajectories, and, where cameras were recorded, a strip of real vs
twin frames side by side.

--inject-delay-ticks / --inject-gain make the "real" side a twin that applies each command k periods late or
moves only `gain` of the way to it per period: the gap a real arm with that fault would show, to check the
report itself (measured: zero injection on HIL recordings gives ~0 gap; see tests/test_report_sim_gap.py).
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pirl_robot.record.episodes import RecordedEpisode, RecordingError

ARM_JOINTS = tuple(f"panda_joint{i}" for i in range(1, 8))
MAX_LAG_TICKS = 10
START_ROWS = 10  # the first 0.5 s at 20 Hz: the smooth start; "after start" columns leave these rows out


@dataclass
class Trace:
    """What the comparison needs from one episode."""

    name: str
    task: str
    seed: int | None
    period: float                       # s per control tick
    joint_names: tuple[str, ...]        # columns of `real`
    real: np.ndarray                    # (N, J) measured joint positions each tick started from
    command_names: tuple[str, ...]
    commands: np.ndarray                # (N, C) applied commands (command units)
    sent: np.ndarray                    # (N,) bool
    cameras: tuple[tuple[str, int, int], ...] = ()
    images: dict[str, np.ndarray] = field(default_factory=dict)  # camera -> (N, H, W, 3)


def trace_from_episode(ep: RecordedEpisode, with_images: bool = True) -> Trace:
    c, schema = ep.columns(), ep.schema
    for key in ("observation.joints.position", "command.applied", "command.sent"):
        if key not in c:
            raise RecordingError(f"{ep.name} lacks {key!r}; it was not recorded by the deploy node's recorder")
    sim = ep.meta.get("sim") or {}
    task = sim.get("task") or "PushCube-v1"
    images = {cam: ep.images(cam) for cam, _, _ in schema.cameras} if with_images else {}
    return Trace(ep.name, task, sim.get("seed"), 1.0 / schema.fps, schema.joint_names,
                 c["observation.joints.position"].astype(np.float64), schema.command_names,
                 c["command.applied"].astype(np.float64), c["command.sent"].astype(bool), schema.cameras, images)


class TwinArm:
    """The simulated Panda stepping one control period per command; optional injected faults (delay, gain)."""

    def __init__(self, trace: Trace, delay_ticks: int = 0, gain: float = 1.0):
        from pirl_robot.drivers.arms.maniskill_arm import ManiSkillArm
        from sim.maniskill.config import TaskConfig

        cams = trace.cameras
        obs = dict(obs_mode="rgb", image_size=cams[0][1]) if cams else dict(obs_mode="state")
        self.arm = ManiSkillArm(TaskConfig(task=trace.task, **obs))
        self.arm.connect()
        self.delay, self.gain = delay_ticks, gain
        self.queue: deque = deque()

    def reset(self, seed: int | None, q0: np.ndarray, joint_names: tuple[str, ...]) -> None:
        import torch

        self.arm.reset(seed)
        robot = self.arm.env.unwrapped.agent.robot
        q = robot.get_qpos().clone()
        index = {n: i for i, n in enumerate(self.arm.joint_names)}
        for n, v in zip(joint_names, q0):
            if n in index:
                q[0, index[n]] = float(v)
        robot.set_qpos(q)
        robot.set_qvel(torch.zeros_like(q))
        self.arm.send(q[0, :8].numpy(), self.arm.joint_names[:8])  # hold the start (arm + finger) until told
        self.queue = deque([None] * self.delay)

    def joints(self, names: tuple[str, ...]) -> np.ndarray:
        p = self.arm.env.privileged()["qpos"]
        index = {n: i for i, n in enumerate(self.arm.joint_names)}
        return np.array([p[index[n]] for n in names])

    def step(self, command: np.ndarray | None, names: tuple[str, ...]) -> None:
        self.queue.append(command)
        cmd = self.queue.popleft()
        if cmd is not None:
            if self.gain != 1.0:  # a controller that covers only `gain` of the way per period
                now = self.joints(names)
                cmd = now + self.gain * (cmd - now)
            self.arm.send(cmd, names)
        self.arm.step()

    def frame(self, cam: str) -> np.ndarray:
        return self.arm.images()[cam]

    def close(self) -> None:
        self.arm.disconnect()


def run_twin(trace: Trace, delay_ticks: int = 0, gain: float = 1.0, frames: bool = False
             ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(N, J) twin joint positions at the recorded rows (+ camera frames if asked)."""
    twin = TwinArm(trace, delay_ticks, gain)
    try:
        twin.reset(trace.seed, trace.real[0], trace.joint_names)
        out, imgs = [], {c: [] for c, _, _ in trace.cameras} if frames else {}
        for cmd, sent in zip(trace.commands, trace.sent):
            out.append(twin.joints(trace.joint_names))
            for c in imgs:
                imgs[c].append(twin.frame(c))
            twin.step(cmd if sent else None, trace.command_names)
    finally:
        twin.close()
    return np.asarray(out), {c: np.asarray(v) for c, v in imgs.items()}


def inject(trace: Trace, delay_ticks: int = 0, gain: float = 1.0) -> Trace:
    """The trace as an arm with that fault would have recorded it (its commands replayed through the faulty twin)."""
    real, _ = run_twin(trace, delay_ticks, gain)
    tag = ", ".join(x for x in (f"delay {delay_ticks} ticks" if delay_ticks else "",
                                f"gain {gain:g}" if gain != 1.0 else "") if x)
    return Trace(f"{trace.name} [{tag}]", trace.task, trace.seed, trace.period, trace.joint_names, real,
                 trace.command_names, trace.commands, trace.sent)


def joint_gap(real: np.ndarray, sim: np.ndarray, period: float, names: tuple[str, ...]) -> list[dict]:
    """Per joint: RMSE (rad), max |deviation| (rad), lag (ms; positive: real behind the twin), and the RMSE after
    the first START_ROWS rows (a difference at the start alone fades there; a lasting one does not)."""
    out = []
    for j, n in enumerate(names):
        r, s = real[:, j], sim[:, j]
        d = r - s
        best, best_err = 0, np.inf
        if np.ptp(s) > 1e-4:  # a joint that does not move has no lag to measure
            for lag in range(-MAX_LAG_TICKS, MAX_LAG_TICKS + 1):
                a, b = (r[lag:], s[: len(s) - lag]) if lag >= 0 else (r[:lag], s[-lag:])
                err = float(np.sqrt(np.mean((a - b) ** 2))) if len(a) > MAX_LAG_TICKS else np.inf
                if err < best_err - 1e-12:
                    best, best_err = lag, err
        late = d[START_ROWS:] if len(d) > 2 * START_ROWS else d
        out.append({"joint": n, "rmse_rad": float(np.sqrt(np.mean(d ** 2))), "max_dev_rad": float(np.abs(d).max()),
                    "rmse_after_start_rad": float(np.sqrt(np.mean(late ** 2))),
                    "lag_ms": 1e3 * best * period, "range_rad": float(np.ptp(r))})
    return out


def episode_gap(trace: Trace, out_dir: Path, delay_ticks: int = 0, gain: float = 1.0) -> dict:
    if delay_ticks or gain != 1.0:
        trace = inject(trace, delay_ticks, gain)
    sim, frames = run_twin(trace, frames=bool(trace.images))
    arm = [i for i, n in enumerate(trace.joint_names) if n in ARM_JOINTS]
    names = tuple(trace.joint_names[i] for i in arm)
    rows = joint_gap(trace.real[:, arm], sim[:, arm], trace.period, names)
    stem = trace.name.replace("/", "_").replace(" ", "_").replace("[", "").replace("]", "").replace(",", "")
    plot = out_dir / f"sim_gap_{stem}.png"
    _plot(trace, sim, arm, plot)
    strip = None
    if frames:
        strip = out_dir / f"sim_gap_frames_{stem}.png"
        _frames(trace, frames, strip)
    return {"episode": trace.name, "rows": len(sim), "joints": rows, "plot": plot.name,
            "frames": strip.name if strip else None,
            "rmse_mean_rad": float(np.mean([r["rmse_rad"] for r in rows])),
            "max_dev_rad": float(max(r["max_dev_rad"] for r in rows))}


def _plot(trace: Trace, sim: np.ndarray, arm: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.arange(len(sim)) * trace.period
    fig, axes = plt.subplots(len(arm), 1, figsize=(8, 1.3 * len(arm)), sharex=True)
    for ax, j in zip(np.atleast_1d(axes), arm):
        ax.plot(t, trace.real[:, j], label="real (recorded)", lw=1.6)
        ax.plot(t, sim[:, j], "--", label="sim twin", lw=1.2)
        ax.set_ylabel(trace.joint_names[j].replace("panda_", ""), fontsize=8)
    np.atleast_1d(axes)[0].legend(fontsize=7, loc="upper right")
    np.atleast_1d(axes)[-1].set_xlabel("s")
    fig.suptitle(f"{trace.name}: joint positions (rad), real vs sim twin", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _frames(trace: Trace, sim: dict[str, np.ndarray], path: Path, count: int = 6) -> None:
    import cv2

    blocks = []
    for cam, real in trace.images.items():
        idx = np.linspace(0, len(real) - 1, count).astype(int)
        top = np.concatenate([real[i] for i in idx], axis=1)
        bottom = np.concatenate([sim[cam][i] for i in idx], axis=1)
        blocks.append(np.concatenate([top, bottom], axis=0))
    img = np.concatenate(blocks, axis=0)
    scale = max(1, 256 // img.shape[0] * 2)
    cv2.imwrite(str(path), cv2.cvtColor(cv2.resize(img, None, fx=scale, fy=scale,
                                                   interpolation=cv2.INTER_NEAREST), cv2.COLOR_RGB2BGR))


def build_sim_gap_report(episodes: list[RecordedEpisode], out: Path, delay_ticks: int = 0, gain: float = 1.0) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    results = [episode_gap(trace_from_episode(e), out, delay_ticks, gain) for e in episodes]
    names = [r["joint"] for r in results[0]["joints"]]
    summary = []
    for j, n in enumerate(names):
        summary.append({"joint": n, "rmse_rad": float(np.mean([r["joints"][j]["rmse_rad"] for r in results])),
                        "rmse_after_start_rad": float(np.mean([r["joints"][j]["rmse_after_start_rad"]
                                                               for r in results])),
                        "max_dev_rad": float(max(r["joints"][j]["max_dev_rad"] for r in results)),
                        "lag_ms": float(np.median([r["joints"][j]["lag_ms"] for r in results]))})
    injected = {"delay_ticks": delay_ticks, "gain": gain}
    lines = ["# Sim-real gap", "",
             f"{len(results)} episodes; recorded applied commands re-executed open loop in the ManiSkill twin from "
             f"the recorded initial joints" + (f"; injected fault on the real side: {injected}" if
                                                delay_ticks or gain != 1.0 else "") + ".", "",
             f"| joint | tracking RMSE (rad) | RMSE after the first {START_ROWS} rows (rad) | max deviation (rad) | "
             f"lag (ms, median) |", "|---|---|---|---|---|"]
    lines += [f"| {r['joint']} | {r['rmse_rad']:.4g} | {r['rmse_after_start_rad']:.4g} | {r['max_dev_rad']:.4g} | "
              f"{r['lag_ms']:.0f} |" for r in summary]
    lines += ["", "| episode | rows | mean RMSE (rad) | max deviation (rad) | plot | frames |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['episode']} | {r['rows']} | {r['rmse_mean_rad']:.4g} | {r['max_dev_rad']:.4g} | "
              f"![]({r['plot']}) | {'![](' + r['frames'] + ')' if r['frames'] else '-'} |" for r in results]
    (out / "sim_gap.md").write_text("\n".join(lines) + "\n")
    data = {"injected": injected, "joints": summary, "episodes": results}
    (out / "sim_gap.json").write_text(json.dumps(data, indent=1))
    return data
