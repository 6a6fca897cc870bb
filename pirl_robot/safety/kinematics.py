"""End-effector positions from the robot's URDF (pytorch_kinematics), for the workspace box check.

The chain is parsed once and kept; a call is one batched forward pass in float64 (about 0.5 ms on one core for
a few dozen configurations, mostly fixed torch overhead), so the filter checks all of a tick's candidates at once
and skips the call when a reach bound proves them inside (workspace.py).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from pirl_robot.safety.config import SafetyConfigError


@contextlib.contextmanager
def _quiet_urdf_parser() -> Iterator[None]:
    """pytorch_kinematics' URDF parser prints a line per unknown attribute (ManiSkill's URDF has many)."""
    from pytorch_kinematics.urdf_parser_py.xml_reflection import core

    saved, core.on_error = core.on_error, lambda message: None
    try:
        yield
    finally:
        core.on_error = saved


class EndEffectorFK:
    """Position of `ee_link` in the URDF root frame for joint vectors given in the safety config's order."""

    def __init__(self, urdf_path: str | Path, ee_link: str, joint_names: Sequence[str]):
        import pytorch_kinematics as pk

        data = Path(urdf_path).read_bytes()
        with _quiet_urdf_parser():
            try:
                full = pk.build_chain_from_urdf(data)
            except Exception as e:
                raise SafetyConfigError(f"cannot parse URDF {str(urdf_path)!r}: {e}") from e
            links = full.get_link_names()
            if ee_link not in links:
                raise SafetyConfigError(f"workspace.ee_link {ee_link!r} is not a link of {str(urdf_path)!r}; "
                                        f"links: {links}")
            self.chain = pk.SerialChain(full, ee_link).to(dtype=torch.float64)
        chain_joints = self.chain.get_joint_parameter_names()
        missing = [j for j in chain_joints if j not in joint_names]
        if missing:
            raise SafetyConfigError(f"URDF joints {missing} move {ee_link!r} but no safety.joints entry has them as "
                                    f"urdf_joint (entries map to {list(joint_names)})")
        # column of each chain joint in the caller's joint vector
        self.columns = np.array([list(joint_names).index(j) for j in chain_joints])
        self.ee_link = ee_link
        self.reach = self._reach(len(joint_names))

    def _reach(self, n: int) -> np.ndarray | None:
        """Per joint (caller's order): a bound on how far the end effector moves per radian of that joint alone.

        Read from the chain pytorch_kinematics parsed: a revolute joint turns about an axis through its frame's
        origin, so the end effector moves at most |z x (p - o)| <= |p - o| per radian, and |p - o| is at most the
        sum of the lengths of the origin offsets of the frames after the joint (rotations keep lengths). Summed
        over joints this bounds |p(q) - p(q')| <= sum_i reach_i |q_i - q'_i| for any two configurations.
        None (no bound, always FK) when a prismatic joint moves the end effector or an offset is not rigid."""
        from pytorch_kinematics.frame import Joint

        ch = self.chain
        path = ch.parents_indices[ch.frame_to_idx[self.ee_link]].tolist()  # root ... ee_link, in FK order
        lengths = []
        for k in path:
            length = 0.0
            for off in (ch.link_offsets[k], ch.joint_offsets[k]):
                if off is not None:
                    rot = off[0, :3, :3].numpy()
                    if not np.allclose(rot.T @ rot, np.eye(3), atol=1e-6):
                        return None
                    length += float(np.linalg.norm(off[0, :3, 3].numpy()))
            lengths.append(length)
        reach = np.zeros(n)
        for pos, k in enumerate(path):
            kind = Joint.TYPES[int(ch.joint_type_indices[k])]
            if kind == "prismatic":
                return None
            if kind == "revolute":
                reach[self.columns[int(ch.joint_indices[k])]] = sum(lengths[pos + 1:])
        return reach

    @torch.inference_mode()
    def positions(self, q: np.ndarray) -> np.ndarray:
        """(B, n_joints) joint vectors in the config's order -> (B, 3) end-effector positions."""
        th = torch.from_numpy(np.ascontiguousarray(q[:, self.columns], dtype=np.float64))
        return self.chain.forward_kinematics(th).get_matrix()[:, :3, 3].numpy()
