"""The workspace check's shortcut: the reach bound read from the URDF chain is a true bound (checked against an
independent FK), a check that uses it gives exactly the filter output of FK on every tick, with far fewer FK calls,
and chains it cannot bound (a prismatic joint) fall back to FK every time."""

from __future__ import annotations


import numpy as np
import pytest

from pirl_robot.safety import Mode, SafetyFilter
from pirl_robot.safety.kinematics import EndEffectorFK
from pirl_robot.safety.workspace import WorkspaceCheck
from safety_utils import HZ, REST, T, PinocchioFK


pytestmark = pytest.mark.sim  # the independent FK is SAPIEN's Pinocchio model


@pytest.fixture(scope="module")
def pin(panda_cfg):
    return PinocchioFK(panda_cfg.workspace.urdf, panda_cfg.workspace.ee_link, len(panda_cfg.joints))


def random_arm(rng, panda_cfg, n):
    lo = np.array([j.min_position for j in panda_cfg.joints])
    hi = np.array([j.max_position for j in panda_cfg.joints])
    return lo + (hi - lo) * rng.random((n, len(lo)))


def test_the_reach_bound_holds_and_is_not_vacuous(panda_cfg, panda_fk, pin):
    rng = np.random.default_rng(0)
    assert panda_fk.reach is not None and panda_fk.reach.shape == (7,)
    assert panda_fk.reach[-1] > 0.1 and np.all(np.diff(panda_fk.reach) <= 1e-12)  # farther from the hand, longer lever
    a = random_arm(rng, panda_cfg, 300)
    for scale in (0.02, 0.3, 3.0):  # a tick's step, a braking stop, anywhere in the range
        b = np.clip(a + rng.normal(0, scale, a.shape), a.min(0), a.max(0))
        moved = np.array([np.linalg.norm(pin(x) - pin(y)) for x, y in zip(a, b)])
        bound = np.abs(a - b) @ panda_fk.reach
        assert (moved <= bound + 1e-9).all(), (moved - bound).max()
    # one joint at a time, small moves: the bound is within a factor 2 of the truth somewhere (not a loose guess)
    for j in range(4):
        d = np.zeros(7)
        d[j] = 1e-4
        ratio = max(np.linalg.norm(pin(x + d) - pin(x)) / (panda_fk.reach[j] * 1e-4) for x in a[:100])
        assert 0.5 < ratio <= 1.0 + 1e-6, (j, ratio)


def test_numpy_fk_matches_pytorch_kinematics_and_pinocchio(panda_cfg, panda_fk, pin):
    """The tick's numpy forward pass equals pytorch_kinematics' own and SAPIEN's Pinocchio on random arms."""
    q = random_arm(np.random.default_rng(1), panda_cfg, 200)
    ours = panda_fk.positions(q)
    np.testing.assert_allclose(ours, panda_fk.positions_reference(q), atol=1e-12)
    np.testing.assert_allclose(ours[:20], np.stack([pin(x) for x in q[:20]]), atol=1e-6)


def test_a_check_with_the_bound_answers_like_fk(panda_cfg, panda_fk, pin):
    rng = np.random.default_rng(1)
    check = WorkspaceCheck(panda_fk, panda_cfg.workspace.min, panda_cfg.workspace.max)
    lo, hi = np.array(panda_cfg.workspace.min), np.array(panda_cfg.workspace.max)
    q = np.empty((2000, 7))  # an arm wandering around the rest pose, in and out of the box
    q[0] = REST[:7]
    for k in range(1, len(q)):
        q[k] = REST[:7] + 0.99 * (q[k - 1] - REST[:7]) + rng.normal(0, 0.04, 7)
    truth = np.array([((p >= lo) & (p <= hi)).all() for p in map(pin, q)])
    got = np.concatenate([check.inside(q[i:i + 10]) for i in range(0, len(q), 10)])
    assert 0.2 < truth.mean() < 0.95, "the walk should cross the box faces"
    assert np.array_equal(got, truth)
    assert check.proven > 100  # both paths were taken: proofs by the bound and FK calls


def stream(n, seed):
    """A policy that drifts around the rest pose and now and then dives through the table (the box floor)."""
    rng = np.random.default_rng(seed)
    down = np.array([0.0, 0.8, 0.0, -1.9, 0.0, np.pi * 3 / 4, np.pi / 4, 1.0])
    x = REST.copy()
    for k in range(n):
        x = x + rng.normal(0, 0.004, 8) * np.r_[np.ones(7), 0]
        yield REST + (down - REST) * max(0.0, np.sin(k / 40)) * 1.2 + (x - REST)


def test_the_filter_gives_the_same_commands_with_and_without_the_bound(panda_cfg, panda_fk):
    with_bound, fk_always = SafetyFilter(panda_cfg, HZ, fk=panda_fk), SafetyFilter(panda_cfg, HZ, fk=panda_fk)
    fk_always.workspace = WorkspaceCheck(panda_fk, panda_cfg.workspace.min, panda_cfg.workspace.max, use_bound=False)
    causes = set()
    for f in (with_bound, fk_always):
        f.resume()
    for raw in stream(600, seed=2):
        a = with_bound.step(raw, with_bound.command if with_bound.command is not None else REST, T)
        b = fk_always.step(raw, fk_always.command if fk_always.command is not None else REST, T)
        assert a.mode == b.mode and np.array_equal(a.command, b.command)
        assert [e.cause for e in a.events] == [e.cause for e in b.events]
        causes |= {e.cause for e in a.events}
    assert "workspace" in causes and with_bound.mode == Mode.RUNNING
    assert with_bound.workspace.fk_calls < 0.6 * fk_always.workspace.fk_calls, \
        (with_bound.workspace.fk_calls, fk_always.workspace.fk_calls)


PRISMATIC_URDF = """<robot name="lift">
  <link name="base"/><link name="slide"/><link name="arm"/><link name="tip"/>
  <joint name="lift" type="prismatic"><parent link="base"/><child link="slide"/>
    <origin xyz="0 0 0.1"/><axis xyz="0 0 1"/><limit lower="0" upper="0.5" effort="1" velocity="1"/></joint>
  <joint name="turn" type="revolute"><parent link="slide"/><child link="arm"/>
    <origin xyz="0 0 0.05" rpy="0 0 0.3"/><axis xyz="0 0 1"/><limit lower="-3" upper="3" effort="1" velocity="1"/>
  </joint>
  <joint name="tool" type="fixed"><parent link="arm"/><child link="tip"/><origin xyz="0.4 0 0"/></joint>
</robot>"""


def test_a_chain_with_a_prismatic_joint_is_always_checked_with_fk(tmp_path):
    urdf = tmp_path / "lift.urdf"
    urdf.write_text(PRISMATIC_URDF)
    fk = EndEffectorFK(urdf, "tip", ["lift", "turn"])
    assert fk.reach is None  # the slide's travel would lengthen the lever: no bound
    np.testing.assert_allclose(fk.positions(np.array([[0.2, 0.0]]))[0], [0.4 * np.cos(0.3), 0.4 * np.sin(0.3), 0.35])
    check = WorkspaceCheck(fk, [-1, -1, 0], [1, 1, 1])
    for _ in range(3):
        assert check.inside(np.array([[0.2, 0.1], [0.3, 0.1]])).all()
    assert check.fk_calls == 3 and check.proven == 0
    # with the slide fixed the same arm has a bound: the offsets after the turn joint (0.4 m)
    urdf.write_text(PRISMATIC_URDF.replace('type="prismatic"', 'type="fixed"'))
    assert EndEffectorFK(urdf, "tip", ["turn"]).reach == pytest.approx([0.4], abs=1e-7)
