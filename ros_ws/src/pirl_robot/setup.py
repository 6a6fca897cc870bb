"""ament_python glue: installs the launch file, parameter files and node executables of pirl_robot.

The node code is the pirl_robot Python library (installed with pip into the Python that ROS uses); this package
ships no Python module of its own, so it cannot shadow the library.
"""

from glob import glob

from setuptools import setup

PACKAGE = "pirl_robot"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=[],
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/config/safety", glob("config/safety/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="pirl-robot maintainers",
    description="Launch files, parameter files and node executables for pirl-robot deployment.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "deploy_node = pirl_robot.deploy.node:main",
            "sim_arm_node = pirl_robot.drivers.arms.sim_arm_node:main",
            "lerobot_arm_node = pirl_robot.drivers.arms.arm_node:lerobot_main",
        ],
    },
)
