"""deploy.launch.py, the ament package files, the parameter files and `pirl deploy` must agree: same arguments
(one table), same executables, same parameter files, only parameters the nodes declare. Read with ast/yaml/xml:
the launch package is not in the ROS 2 wheels."""

import ast
import importlib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from pirl_robot.deploy import params as P
from pirl_robot.deploy import plan as PLAN
from pirl_robot.deploy.runner import load_node_params, main as deploy_main, node_command

PKG = Path(__file__).resolve().parents[1] / "ros_ws" / "src" / "pirl_robot"
LAUNCH = PKG / "launch" / "deploy.launch.py"
CONFIGS = sorted((PKG / "config").glob("*.yaml"))


def console_scripts() -> dict[str, str]:
    tree = ast.parse((PKG / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "entry_points":
            scripts = ast.literal_eval(node.value)["console_scripts"]
            return {k.strip(): v.strip() for k, v in (s.split("=") for s in scripts)}
    raise AssertionError("setup.py has no entry_points")


def declared_params(executable: str) -> set[str]:
    if executable == "deploy_node":
        return set(P.BY_NAME)
    from pirl_robot.drivers.arms.arm_node import BRIDGE_PARAMS

    cls = PLAN.EXECUTABLES[executable][1]
    module, _, name = cls.partition(":")
    return set(BRIDGE_PARAMS) | set(getattr(importlib.import_module(module), name).extra_params)


def test_package_metadata():
    root = ET.parse(PKG / "package.xml").getroot()
    assert root.get("format") == "3" and root.findtext("name") == "pirl_robot"
    assert root.find("export").findtext("build_type") == "ament_python"
    assert (PKG / "resource" / "pirl_robot").exists()
    src = (PKG / "setup.py").read_text()
    for needle in ('"launch/*.launch.py"', '"config/*.yaml"', "resource/{PACKAGE}", "packages=[]"):
        assert needle in src
    assert "install_scripts=$base/lib/pirl_robot" in (PKG / "setup.cfg").read_text()


def test_setup_executables_are_the_plan_executables():
    assert console_scripts() == {exe: targets[0] for exe, targets in PLAN.EXECUTABLES.items()}
    for script, cls in PLAN.EXECUTABLES.values():
        for target in (script, cls):
            module, _, attr = target.partition(":")
            assert callable(getattr(importlib.import_module(module), attr)), target


def test_launch_file_uses_the_shared_table_and_plan():
    tree = ast.parse(LAUNCH.read_text())
    imports = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert {("pirl_robot.deploy.plan", "LAUNCH_ARGUMENTS"), ("pirl_robot.deploy.plan", "plan_nodes")} <= imports
    calls = {n.func.id: n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    declare = {k.arg: ast.unparse(k.value) for k in calls["DeclareLaunchArgument"].keywords}
    assert ast.unparse(calls["DeclareLaunchArgument"].args[0]) == "a.name"
    assert declare == {"default_value": "a.default", "description": "a.description"}
    node = {k.arg: ast.unparse(k.value) for k in calls["Node"].keywords}
    assert node["executable"] == "n.executable" and node["name"] == "n.name" and node["package"] == "PACKAGE"
    assert node["parameters"] == "[n.params_file, n.overrides]"
    comps = [c for c in ast.walk(tree) if isinstance(c, ast.ListComp) and "plan_nodes" in ast.unparse(c)]
    assert comps and "Node(" in ast.unparse(comps[0])
    assert 'PACKAGE = "pirl_robot"' in LAUNCH.read_text()
    assert {"OpaqueFunction", "LaunchDescription"} <= set(calls)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_files_set_only_declared_valid_parameters(config):
    data = yaml.safe_load(config.read_text())
    assert "deploy_node" in data
    for section, body in data.items():
        assert section in PLAN.EXECUTABLES, f"{config.name}: section {section!r} is no executable of the plan"
        values = body["ros__parameters"]
        unknown = set(values) - declared_params(section)
        assert not unknown, f"{config.name}/{section}: undeclared parameters {sorted(unknown)}"
        if section == "deploy_node":
            assert P.validate(values) == []
            for v in values.values():  # ROS parameter files cannot type an empty list
                assert v != []


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
@pytest.mark.parametrize("arm", sorted(PLAN.ARM_NODES))
def test_every_planned_node_finds_its_parameters(config, arm):
    sections = set(yaml.safe_load(config.read_text()))
    plans = PLAN.plan_nodes({"bundle": "b", "config": config.name, "arm": arm}, PKG / "config")
    assert plans[-1].executable == "deploy_node" and plans[-1].overrides["bundle"].endswith("/b")
    for p in plans:
        assert p.params_file == str(config)
        if p.name in sections:
            assert load_node_params(p.params_file, p.name) == yaml.safe_load(config.read_text())[p.name][
                "ros__parameters"]
        else:  # an arm this config does not describe: its node runs on its declared defaults
            assert p.executable != "deploy_node"


def test_runner_and_launch_agree(capsys, tmp_path):
    assert deploy_main(["--bundle", "b", "--print-plan"]) == 0
    out = capsys.readouterr().out.splitlines()
    plans = PLAN.plan_nodes({"bundle": "b"}, PLAN.default_config_dir())
    assert [line.split()[0] for line in out] == [p.executable for p in plans] == ["sim_arm_node", "deploy_node"]
    # several processes: each node runs its console-script target with the same parameter file
    cmd = node_command(plans[1], str(tmp_path / "o.yaml"), "info")
    module, func = console_scripts()["deploy_node"].split(":")
    assert f"from {module} import {func}" in cmd[2]
    assert cmd[cmd.index("--params-file") + 1] == plans[1].params_file and "__node:=deploy_node" in cmd


def test_launch_argument_table_and_bad_arguments():
    names = [a.name for a in PLAN.LAUNCH_ARGUMENTS]
    assert names[:3] == ["bundle", "config", "arm"] and all(a.description for a in PLAN.LAUNCH_ARGUMENTS)
    with pytest.raises(ValueError, match="arm:=gazebo"):
        PLAN.plan_nodes({"arm": "gazebo"}, PLAN.default_config_dir())
    with pytest.raises(ValueError, match="unknown launch arguments"):
        PLAN.plan_nodes({"bundel": "x"}, PLAN.default_config_dir())
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        PLAN.plan_nodes({"config": "nope.yaml"}, PLAN.default_config_dir())


def test_sim_config_matches_the_sim_task_spec():
    """The HIL config's robot description is exactly what the ManiSkill adapter's policies consume."""
    from pirl_robot.deploy.robot import robot_spec
    from sim.maniskill.config import TaskConfig
    from sim.maniskill.env import task_spec

    for name, obs_mode in (("panda_maniskill.yaml", "state"), ("panda_maniskill_rgb.yaml", "rgb")):
        values = {**P.defaults(), **load_node_params(str(PKG / "config" / name), "deploy_node")}
        task_spec(TaskConfig(task="PushCube-v1", obs_mode=obs_mode)).check_compatible(robot_spec(values))


def test_runner_param_overrides():
    from pirl_robot.deploy.runner import apply_params

    plans = PLAN.plan_nodes({"bundle": "b"}, PLAN.default_config_dir())
    out = apply_params(plans, ["deploy_node.safety_config=unfiltered", "deploy_node.seed=3",
                               "sim_arm_node.seed=7"])
    assert out[1].overrides["safety_config"] == "unfiltered" and out[1].overrides["seed"] == 3
    assert out[0].overrides == {"seed": 7} and out[1].overrides["bundle"].endswith("/b")
    for bad in ("deploy_node.seed", "seed=3", "camera_node.x=1"):
        with pytest.raises(ValueError):
            apply_params(plans, [bad])


def test_docs_list_every_parameter_and_launch_argument():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "deploy.md").read_text()
    missing = [p.name for p in P.PARAMS if f"| `{p.name}` |" not in doc]
    assert not missing, f"docs/deploy.md lacks parameters {missing}"
    assert all(f"`{a.name}`" in doc for a in PLAN.LAUNCH_ARGUMENTS)


def test_safety_configs_of_the_parameter_files_load_for_their_policies():
    from pirl_robot.deploy.safety_hook import resolve_path
    from pirl_robot.safety import load_safety_config
    from sim.maniskill.config import TaskConfig
    from sim.maniskill.env import task_spec

    for name in ("panda_maniskill.yaml", "panda_maniskill_rgb.yaml"):
        path = load_node_params(str(PKG / "config" / name), "deploy_node")["safety_config"]
        load_safety_config(resolve_path(path), spec=task_spec(TaskConfig(task="PushCube-v1")))
