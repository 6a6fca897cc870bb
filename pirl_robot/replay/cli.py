"""pirl replay — look at, re-run and re-execute a recorded episode (docs/record_replay.md).

    pirl replay view recordings/SESSION/episodes/episode_000003                   # -> its .rrd (Rerun)
    pirl replay view recordings/SESSION --episode 3 --out ep3.rrd --open           # and open the viewer
    pirl replay rerun recordings/SESSION/episodes/episode_000003 --bundle bundles/new --out outputs/replay/ep3
    pirl replay execute recordings/SESSION/episodes/episode_000003 --arm maniskill \\
        --safety-config ros_ws/src/pirl_robot/config/safety/panda_maniskill.yaml
    pirl replay execute EPISODE --arm ros --safety-config configs/robot/panda.yaml   # a ROS 2 arm (sim arm node...)

view: the episode's Rerun recording (the same entities and layout as the live view; written from the dataset).
rerun: every recorded chunk recomputed by --bundle from the observation it came from, with the recorded noise
    (--seed N: fresh noise); per-joint divergence table (divergence.md/json) and plots (actions.png,
    divergence.png). The bundle that ran the episode reproduces it exactly.
execute: the recorded applied commands (--commands policy: the raw policy actions) sent to an arm at the
    recorded rate through the safety filter (default: the config the episode ran with); prints how far the arm's
    joints ended up from the recorded ones.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from pirl_robot.record.episodes import RecordedEpisode, RecordingError, find_episodes


def resolve_episode(path: str, number: int | None) -> RecordedEpisode:
    eps = find_episodes([path])
    if not eps:
        raise RecordingError(f"no recorded episode under {path}")
    if number is not None:
        eps = [e for e in eps if e.meta["episode"] == number]
        if not eps:
            raise RecordingError(f"{path} has no episode {number}")
    elif len(eps) > 1:
        raise RecordingError(f"{path} holds {len(eps)} episodes: give --episode N (one of "
                             f"{[e.meta['episode'] for e in eps]})")
    return eps[-1]


def cmd_view(ep: RecordedEpisode, a) -> int:
    from pirl_robot.record.rerun_log import log_recorded_episode

    out = Path(a.out) if a.out else ep.rrd
    if a.out or not out.is_file():
        log_recorded_episode(ep, out)
    print(f"{ep.name}: {out}")
    if a.open:
        subprocess.Popen(["rerun", str(out)])
    return 0


def cmd_rerun(ep: RecordedEpisode, a) -> int:
    from pirl_robot.evaluate import load_any
    from pirl_robot.replay.offline import rerun_episode, save_report

    policy = load_any(a.bundle)
    res = rerun_episode(ep, policy, bundle_name=str(a.bundle), noise_seed=a.seed)
    print(res.markdown())
    if a.out:
        for p in save_report(res, Path(a.out)):
            print(f"wrote {p}")
    return 0


def cmd_execute(ep: RecordedEpisode, a) -> int:
    from pirl_robot.replay.execute import execute_episode, maniskill_arm

    safety = a.safety_config or ep.meta.get("params", {}).get("safety_config", "")
    if not safety or safety == "unfiltered" and not a.safety_config:
        raise RecordingError("the episode ran without the safety filter: give --safety-config (a robot yaml with a "
                             "'safety:' section), or 'unfiltered' for a simulated arm")
    if a.arm == "maniskill":
        arm, step = maniskill_arm(ep, a.task)
        try:
            res = execute_episode(ep, arm, safety, a.commands, step=step, realtime=False)
        finally:
            arm.disconnect()
    else:
        res = _execute_over_ros(ep, safety, a)
    print(res.markdown())
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "execute.md").write_text(res.markdown() + "\n")
        (out / "execute.json").write_text(json.dumps({"commands": res.commands, "sent": res.sent,
                                                      "modified": res.modified, "safety": res.safety,
                                                      "stale_ticks": res.stale_ticks,
                                                      "tracking": res.tracking(), "events": res.events},
                                                     default=str, indent=1))
    return 0


def _execute_over_ros(ep: RecordedEpisode, safety: str, a):
    import rclpy
    from rclpy.node import Node

    from pirl_robot.deploy.runner import ensure_ros_env, spin
    from pirl_robot.drivers.arms.ros2_control import Ros2ControlArm
    from pirl_robot.replay.execute import execute_episode

    ensure_ros_env()
    rclpy.init()
    node = Node("pirl_replay_execute")
    import threading

    stop = threading.Event()
    spinner = threading.Thread(target=spin, args=([node], stop), daemon=True)
    spinner.start()
    hz = float(ep.meta["schema"].get("fps", 20.0))
    arm = Ros2ControlArm(node, ep.schema.command_names, a.joint_states_topic, a.command_topic, a.command_interface,
                         1.0 / hz)
    try:
        arm.connect()
        import time

        deadline = time.monotonic() + 10.0
        while arm.latest() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return execute_episode(ep, arm, safety, a.commands, realtime=True)
    finally:
        arm.disconnect()
        stop.set()
        spinner.join(timeout=5)
        node.destroy_node()
        rclpy.try_shutdown()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pirl replay", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    for mode in ("view", "rerun", "execute"):
        p = sub.add_parser(mode)
        p.add_argument("episode", help="an episode dir, or a session/record dir with --episode")
        p.add_argument("--episode", dest="number", type=int, default=None, help="episode number in a session")
        p.add_argument("--out", default=None, help="output file (.rrd, view) or directory (rerun, execute)")
        if mode == "view":
            p.add_argument("--open", action="store_true", help="open the Rerun viewer on it")
        if mode == "rerun":
            p.add_argument("--bundle", required=True, help="bundle (or checkpoint) to re-run the episode with")
            p.add_argument("--seed", type=int, default=None, help="fresh noise from this seed (default: recorded)")
        if mode == "execute":
            p.add_argument("--arm", choices=("maniskill", "ros"), default="maniskill")
            p.add_argument("--safety-config", default="", help="robot yaml with a safety: section, or 'unfiltered'")
            p.add_argument("--commands", choices=("applied", "policy"), default="applied")
            p.add_argument("--task", default=None, help="ManiSkill task (default: the recorded one)")
            p.add_argument("--joint-states-topic", default="/joint_states")
            p.add_argument("--command-topic", default="/joint_trajectory_controller/joint_trajectory")
            p.add_argument("--command-interface", choices=("trajectory", "position"), default="trajectory")
    a = ap.parse_args(argv)
    try:
        ep = resolve_episode(a.episode, a.number)
        return {"view": cmd_view, "rerun": cmd_rerun, "execute": cmd_execute}[a.mode](ep, a)
    except (RecordingError, ValueError, RuntimeError) as e:
        print(f"pirl replay: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
