"""`pirl <verb>`: one entry point, one module per verb (each module's docstring shows its commands).

    pirl train [hydra overrides]     few-shot SFT + online RL in simulation
    pirl eval  ...                   evaluate a checkpoint or bundle in simulation
    pirl export CKPT OUT             export a deploy bundle
    pirl deploy ...                  run the deploy node(s) without `ros2 launch`
    pirl serve BUNDLE                serve a policy to robot computers without a GPU (remote://)
    pirl replay ...                  view / re-run / re-execute a recorded episode
    pirl report ...                  summarise recorded evaluations
    pirl calibrate ...               camera intrinsics, hand-eye pose, sim twin check (calibration/)
"""

from __future__ import annotations

import importlib
import sys

# verb -> (module with a main(argv) -> int, one-line help). Modules import lazily: `pirl --help` stays instant.
VERBS: dict[str, tuple[str, str]] = {
    "train": ("pirl_robot.train", "few-shot SFT from sim demos, then online RL (PPO / GRPO / π-StepNFT)"),
    "eval": ("pirl_robot.evaluate", "success rates of a checkpoint or bundle per task and suite (LIBERO, ManiSkill)"),
    "export": ("pirl_robot.bundle.cli", "export a checkpoint as a deploy bundle (checksummed, no pickle)"),
    "deploy": ("pirl_robot.deploy.runner", "run the deploy node and drivers (what deploy.launch.py starts)"),
    "serve": ("pirl_robot.serve.cli", "serve a bundle over websockets to deploy nodes on GPU-less robot computers"),
    "replay": ("pirl_robot.replay.cli", "view a recorded episode (Rerun), re-run it offline, re-execute it on an arm"),
    "report": ("pirl_robot.report.cli", "success rates (Wilson CI), interventions, latencies of recorded episodes"),
    "calibrate": ("calibration.cli", "camera intrinsics, hand-eye pose, the sim twin's camera check"),
}


def _usage() -> str:
    width = max(map(len, VERBS))
    lines = ["usage: pirl <verb> [args]   (pirl <verb> --help for details)", "", "verbs:"]
    lines += [f"  {v:<{width}}  {h}" for v, (_, h) in VERBS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"pirl: unknown verb {verb!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(VERBS[verb][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
