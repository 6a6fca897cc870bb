"""End-effector positions from the robot's URDF, for the workspace box check.

pytorch_kinematics parses the URDF once; its chain is then flattened into a list of fixed 4x4 offsets and joint
axes evaluated with numpy (float64). The control tick calls this: torch's per-op overhead made the same batched
forward pass about 0.5 ms, numpy's is a fraction of that. The filter checks all of a tick's candidates at once
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
        self._steps = self._flatten()

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

    def _flatten(self) -> list[tuple[np.ndarray, int, np.ndarray | None, str]]:
        """The chain root -> ee_link as (fixed offset, column in the caller's vector, unit axis, joint type) in
        pytorch_kinematics' composition order: T <- T @ link_offset @ joint_offset @ joint_motion(q)."""
        from pytorch_kinematics.frame import Joint

        ch = self.chain
        steps = []
        for k in ch.parents_indices[ch.frame_to_idx[self.ee_link]].tolist():
            offset = np.eye(4)
            for off in (ch.link_offsets[k], ch.joint_offsets[k]):
                if off is not None:
                    offset = offset @ off[0].numpy()
            kind = Joint.TYPES[int(ch.joint_type_indices[k])]
            axis = ch.axes[int(ch.joint_indices[k])].numpy().astype(np.float64) if kind != "fixed" else None
            col = int(self.columns[int(ch.joint_indices[k])]) if kind != "fixed" else -1
            steps.append((offset, col, None if axis is None else axis / np.linalg.norm(axis), kind))
        return steps

    def positions(self, q: np.ndarray) -> np.ndarray:
        """(B, n_joints) joint vectors in the config's order -> (B, 3) end-effector positions."""
        q = np.asarray(q, dtype=np.float64)
        t = np.broadcast_to(np.eye(4), (q.shape[0], 4, 4))
        for offset, col, axis, kind in self._steps:
            t = t @ offset
            if kind == "revolute":
                t = t @ _rotation(axis, q[:, col])
            elif kind == "prismatic":
                motion = np.broadcast_to(np.eye(4), t.shape).copy()
                motion[:, :3, 3] = axis * q[:, col, None]
                t = t @ motion
        return np.ascontiguousarray(t[:, :3, 3])

    @torch.inference_mode()
    def positions_reference(self, q: np.ndarray) -> np.ndarray:
        """The same through pytorch_kinematics' own forward pass (the tests compare the two)."""
        th = torch.from_numpy(np.ascontiguousarray(q[:, self.columns], dtype=np.float64))
        return self.chain.forward_kinematics(th).get_matrix()[:, :3, 3].numpy()


def _rotation(axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """(B, 4, 4) homogeneous rotations about one unit axis by B angles (Rodrigues)."""
    x, y, z = axis
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    s, c = np.sin(angle)[:, None, None], np.cos(angle)[:, None, None]
    out = np.zeros((angle.shape[0], 4, 4))
    out[:, :3, :3] = np.eye(3) + s * k + (1.0 - c) * (k @ k)
    out[:, 3, 3] = 1.0
    return out
