"""Safety config loading: the shipped panda.yaml is valid and matches a panda policy spec; every kind of
mistake is refused with an error that names the field."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml

from pirl_robot.safety import SafetyConfigError, SafetyFilter, load_safety_config
from pirl_robot.spec import PolicySpec

PANDA_YAML = Path(__file__).resolve().parents[1] / "configs" / "robot" / "panda.yaml"
ARM = [f"panda_joint{i}" for i in range(1, 8)]


@pytest.fixture(scope="module")
def panda_raw() -> dict:
    return yaml.safe_load(PANDA_YAML.read_text())


def spec(actions=(*ARM, "gripper"), action_type="joint_pos") -> PolicySpec:
    return PolicySpec(state_names=tuple(actions), action_names=tuple(actions), action_type=action_type)


def test_panda_config_loads_and_matches_a_panda_spec():
    cfg = load_safety_config(PANDA_YAML, spec=spec())
    assert cfg.entry_names == (*ARM, "gripper")
    v = cfg.vectors()
    assert v["soft_lo"][0] == pytest.approx(-2.8973 + 0.05) and v["soft_hi"][3] == pytest.approx(-0.0698 - 0.05)
    assert np.isinf(v["max_acceleration"][-1]) and np.isinf(v["max_jerk"]).all()  # gripper; no jerk on the panda
    assert Path(cfg.workspace.urdf).name == "panda_v2.urdf" and Path(cfg.workspace.urdf).is_file()
    assert cfg.watchdog.stop_after_s == 2.0 and cfg.start.velocity_scale == 0.25


def edited(raw: dict, edit) -> dict:
    d = copy.deepcopy(raw)
    edit(d["safety"])
    return d


def joint0(**changes):
    def edit(s):
        s["joints"][0].update(changes)
        for k, v in changes.items():
            if v is None:
                del s["joints"][0][k]
    return edit


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update(max_speed=1.0), r"safety: unknown keys \['max_speed'\]"),
    (joint0(max_vel=1.0), r"safety.joints\[0\] \(panda_joint1\): unknown keys \['max_vel'\]"),
    (lambda s: s["workspace"].update(frame="world"), r"safety.workspace: unknown keys \['frame'\]"),
    (lambda s: s["watchdog"].update(camera_timeout=0.1), r"safety.watchdog: unknown keys \['camera_timeout'\]"),
    (joint0(min_position=1.0, max_position=-1.0), r"min_position 1.0 must be < max_position -1.0"),
    (joint0(max_velocity=-1.0), r"safety.joints\[0\] \(panda_joint1\).max_velocity must be > 0, got -1.0"),
    (joint0(max_acceleration=0), r"max_acceleration must be > 0, got 0"),
    (joint0(max_step=None), r"safety.joints\[0\] \(panda_joint1\).max_step is required"),
    (joint0(position_margin=-0.1), r"position_margin must be >= 0"),
    (joint0(position_margin=3.0), r"position_margin 3.0 leaves no room"),
    (joint0(max_velocity=None), r"max_velocity is required"),
    (joint0(max_jerk=100.0), r"max_jerk is set but has_jerk_limits is false"),
    (joint0(has_jerk_limits=True), r"max_jerk is required"),
    (joint0(has_velocity_limits="yes"), r"has_velocity_limits must be true or false"),
    (joint0(max_velocity=True), r"max_velocity must be a finite number, got True"),
    (joint0(max_velocity=".nan"), r"max_velocity must be a finite number"),
    (joint0(max_velocity=float("inf")), r"max_velocity must be a finite number, got inf"),
    (joint0(has_position_limits=False), r"min/max_position set but has_position_limits is false"),
    (joint0(name="panda_joint2"), r"command entry names must be unique"),
    (lambda s: s.update(joints=[]), r"safety.joints must be a non-empty list"),
    (lambda s: s["gripper"].update(min_position=1.5), r"safety.gripper: min_position 1.5 must be < max_position"),
    (lambda s: s["gripper"].update(max_step=0), r"safety.gripper.max_step must be > 0"),
    (lambda s: s.update(reject_beyond=-1), r"safety.reject_beyond must be >= 0"),
    (lambda s: s["workspace"].update(min=[0.9, -0.6, 0.0]), r"safety.workspace: min .* must be < max"),
    (lambda s: s["workspace"].update(max=[1, 2]), r"safety.workspace.max must be a list of 3 finite numbers"),
    (lambda s: s["workspace"].update(urdf="no/such/robot.urdf"), r"safety.workspace.urdf: no such file"),
    (lambda s: s["start"].update(velocity_scale=1.5), r"safety.start.velocity_scale must be in \(0, 1\]"),
    (lambda s: s["watchdog"].update(stop_after_s=0), r"safety.watchdog.stop_after_s must be > 0"),
])
def test_malformed_config_is_refused_with_a_clear_error(panda_raw, edit, message):
    with pytest.raises(SafetyConfigError, match=message):
        load_safety_config(edited(panda_raw, edit))


def test_config_must_match_the_policy_actions():
    with pytest.raises(SafetyConfigError, match=r"policy has 7 actions .* the safety config has 8 entries"):
        load_safety_config(PANDA_YAML, spec=spec(ARM))
    with pytest.raises(SafetyConfigError, match=r"same order"):
        load_safety_config(PANDA_YAML, spec=spec(("gripper", *ARM)))
    with pytest.raises(SafetyConfigError, match=r"action_type 'ee_delta_pose' is not one of"):
        load_safety_config(PANDA_YAML, spec=spec(action_type="ee_delta_pose"))


def test_urdf_mismatches_are_refused_when_the_filter_is_built(panda_raw):
    bad_link = load_safety_config(edited(panda_raw, lambda s: s["workspace"].update(ee_link="panda_gripper")))
    with pytest.raises(SafetyConfigError, match=r"workspace.ee_link 'panda_gripper' is not a link of"):
        SafetyFilter(bad_link, 50)
    renamed = load_safety_config(edited(panda_raw, joint0(urdf_joint="joint_1")))
    with pytest.raises(SafetyConfigError, match=r"URDF joints \['panda_joint1'\] move 'panda_hand_tcp' but no"):
        SafetyFilter(renamed, 50)


def test_unreadable_or_sectionless_files_are_refused(tmp_path):
    (tmp_path / "broken.yaml").write_text("safety: [unclosed\n")
    with pytest.raises(SafetyConfigError, match="cannot read safety config"):
        load_safety_config(tmp_path / "broken.yaml")
    (tmp_path / "empty.yaml").write_text("driver: {port: /dev/ttyUSB0}\n")
    with pytest.raises(SafetyConfigError, match="expected a mapping with a 'safety:' section"):
        load_safety_config(tmp_path / "empty.yaml")
    with pytest.raises(SafetyConfigError, match="cannot read safety config"):
        load_safety_config(tmp_path / "missing.yaml")


def test_relative_urdf_paths_resolve_against_the_config_file(tmp_path, panda_raw):
    urdf = Path(load_safety_config(PANDA_YAML).workspace.urdf)
    (tmp_path / "robot.urdf").write_bytes(urdf.read_bytes())
    d = edited(panda_raw, lambda s: s["workspace"].update(urdf="robot.urdf"))
    (tmp_path / "panda_copy.yaml").write_text(yaml.safe_dump(d))
    cfg = load_safety_config(tmp_path / "panda_copy.yaml")
    assert cfg.workspace.urdf == str(tmp_path / "robot.urdf")
