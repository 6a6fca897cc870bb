"""What `ros2 launch pirl_robot deploy.launch.py` and `pirl deploy` start: ONE table of launch arguments and ONE
function from argument values to nodes (executable, name, parameter file, overrides). The launch file and the
runner both call it, so they cannot drift apart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class LaunchArg:
    name: str
    default: str
    description: str


LAUNCH_ARGUMENTS: tuple[LaunchArg, ...] = (
    LaunchArg("bundle", "", "Policy bundle directory (made by `pirl export`), or remote://HOST:PORT of `pirl serve`."),
    LaunchArg("config", "panda_maniskill.yaml", "Parameter file: a name in the package's config/ or a path."),
    LaunchArg("arm", "sim", "Arm driver node to start: 'sim' (ManiSkill Panda), 'lerobot' (lerobot robot bridge), "
              "'none' (an arm already on ROS, e.g. ros2_control)."),
    LaunchArg("log_level", "info", "ROS log level of the started nodes."),
)

# executable -> (module:function for the console script, module:class for in-process use)
EXECUTABLES: dict[str, tuple[str, str]] = {
    "deploy_node": ("pirl_robot.deploy.node:main", "pirl_robot.deploy.node:DeployNode"),
    "sim_arm_node": ("pirl_robot.drivers.arms.sim_arm_node:main", "pirl_robot.drivers.arms.sim_arm_node:SimArmNode"),
    "lerobot_arm_node": ("pirl_robot.drivers.arms.arm_node:lerobot_main",
                         "pirl_robot.drivers.arms.arm_node:LeRobotArmNode"),
}
ARM_NODES = {"sim": "sim_arm_node", "lerobot": "lerobot_arm_node", "none": None}


@dataclass(frozen=True)
class NodePlan:
    executable: str
    name: str
    params_file: str
    overrides: dict = field(default_factory=dict)


def default_config_dir() -> Path:
    """config/ of the ROS package in this source tree (the launch file uses the installed share/ copy)."""
    return Path(__file__).resolve().parents[2] / "ros_ws" / "src" / "pirl_robot" / "config"


def resolve_config(config: str, config_dir: str | os.PathLike) -> str:
    path = Path(config) if os.path.isabs(config) or os.sep in config else Path(config_dir) / config
    if not path.is_file():
        raise FileNotFoundError(f"parameter file {path} not found")
    return str(path)


def plan_nodes(args: dict[str, str], config_dir: str | os.PathLike) -> list[NodePlan]:
    values = {a.name: a.default for a in LAUNCH_ARGUMENTS}
    unknown = set(args) - set(values)
    if unknown:
        raise ValueError(f"unknown launch arguments {sorted(unknown)}; known: {sorted(values)}")
    values.update(args)
    if values["arm"] not in ARM_NODES:
        raise ValueError(f"arm:={values['arm']} not in {sorted(ARM_NODES)}")
    params_file = resolve_config(values["config"], config_dir)
    plans = []
    if ARM_NODES[values["arm"]]:
        plans.append(NodePlan(ARM_NODES[values["arm"]], ARM_NODES[values["arm"]], params_file))
    bundle = values["bundle"]
    if bundle and "://" not in bundle:  # a directory (a served policy, remote://HOST:PORT, stays as given)
        bundle = os.path.abspath(bundle)
    overrides = {"bundle": bundle} if bundle else {}
    plans.append(NodePlan("deploy_node", "deploy_node", params_file, overrides))
    return plans
