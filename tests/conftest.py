"""Fixtures shared across test modules."""

from __future__ import annotations

import pytest

from pirl_robot.safety import SafetyFilter, load_safety_config
from safety_utils import HZ, PANDA_YAML


@pytest.fixture(scope="session")
def panda_cfg():
    """The shipped configs/robot/panda.yaml safety config (frozen, so one instance serves every test)."""
    return load_safety_config(PANDA_YAML)


@pytest.fixture(scope="session")
def panda_fk(panda_cfg):
    """The filter's end-effector FK for panda_cfg: the URDF chain is parsed once per session."""
    return SafetyFilter(panda_cfg, HZ).fk
