"""Start the deploy node and the configured arm driver.

    ros2 launch pirl_robot deploy.launch.py bundle:=/path/to/bundle
    ros2 launch pirl_robot deploy.launch.py bundle:=/path/to/bundle config:=so101_lerobot.yaml arm:=lerobot
    ros2 launch pirl_robot deploy.launch.py --show-args

Arguments and nodes come from pirl_robot.deploy.plan, the same table and plan `pirl deploy` uses.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch_ros.actions import Node

from pirl_robot.deploy.plan import LAUNCH_ARGUMENTS, plan_nodes

PACKAGE = "pirl_robot"


def _nodes(context):
    args = {a.name: context.launch_configurations[a.name] for a in LAUNCH_ARGUMENTS}
    config_dir = os.path.join(get_package_share_directory(PACKAGE), "config")
    return [
        Node(package=PACKAGE, executable=n.executable, name=n.name, output="screen",
             parameters=[n.params_file, n.overrides], arguments=["--ros-args", "--log-level", args["log_level"]])
        for n in plan_nodes(args, config_dir)
    ]


def generate_launch_description():
    declared = [DeclareLaunchArgument(a.name, default_value=a.default, description=a.description)
                for a in LAUNCH_ARGUMENTS]
    return LaunchDescription(declared + [OpaqueFunction(function=_nodes)])
