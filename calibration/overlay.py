"""What the sim twin sees, laid over what the real camera saw: the check a person looks at after calibrating.

    img = overlay(real_rgb, sim_rgb)          # (H, 3W, 3): real | twin render | real with the render's edges
    sim = render_twin(cal, "PushCube-v1", joints=q)   # the ManiSkill scene through the calibrated camera

The robot is put at the joint positions of the real frame (from the capture session), so its silhouette in the
render must sit on the real arm; a pose or focal error shows as edges shifted from the real ones.
"""

from __future__ import annotations

import cv2
import numpy as np

from calibration.calib_file import CalibrationFile


def render_twin(cal: CalibrationFile, task: str = "PushCube-v1", joints: np.ndarray | None = None,
                seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 render of `task`'s scene through the calibrated camera at its full resolution."""
    import gymnasium as gym
    import mani_skill.envs  # noqa: F401

    from sim.maniskill.twin import HAND_ROBOT, CameraTwin

    twin = CameraTwin.from_calibration(cal, task, cal.width, cal.height)
    robot = {"robot_uids": HAND_ROBOT} if twin.on_hand else {}  # an eye-in-hand camera rides on the wrist
    env = gym.make(task, obs_mode="rgb", render_backend="cpu", sim_backend="cpu",
                   sensor_configs=twin.sensor_configs(), **robot)
    try:
        env.reset(seed=seed)
        u = env.unwrapped
        if joints is not None:
            q = u.agent.robot.get_qpos().clone()
            q[0, : len(joints)] = q.new_tensor(np.asarray(joints, dtype=np.float32))
            u.agent.robot.set_qpos(q)
        obs = u.get_obs()
        rgb = obs["sensor_data"][twin.uid]["rgb"][0].cpu().numpy()
    finally:
        env.close()
    return twin.distort(rgb)


def overlay(real: np.ndarray, sim: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Side by side: the real frame, the twin's render, and the real frame with the render's edges (green)
    and a half-transparent copy of the render."""
    if real.shape != sim.shape:
        raise ValueError(f"real frame {real.shape} and sim render {sim.shape} differ; calibrate at the frame's size")
    edges = cv2.Canny(cv2.cvtColor(sim, cv2.COLOR_RGB2GRAY), 100, 250) > 0
    mixed = cv2.addWeighted(real, 1.0 - alpha, sim, alpha, 0.0)
    mixed[edges] = (0, 255, 0)
    out = np.concatenate([real, sim, mixed], axis=1)
    for k, label in enumerate(("real", "sim twin", "overlay")):
        cv2.putText(out, label, (k * real.shape[1] + 8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 0), 2)
    return out


def reprojection_plot(views: dict[str, tuple[np.ndarray, np.ndarray]], per_view_px: dict[str, float],
                      image_size: tuple[int, int], path) -> None:
    """Residual vectors over the image (x 50) and each view's RMS reprojection error, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1.3, 1]})
    for name, (img_pts, proj) in views.items():
        d = proj - img_pts
        a.quiver(img_pts[:, 0], img_pts[:, 1], d[:, 0], d[:, 1], angles="xy", scale_units="xy", scale=1 / 50,
                 width=0.002)
    a.set_xlim(0, image_size[0]), a.set_ylim(image_size[1], 0), a.set_aspect("equal")
    a.set_title("reprojection residuals (x 50) over the image")
    names = list(per_view_px)
    b.bar(range(len(names)), [per_view_px[n] for n in names])
    b.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    b.set_ylabel("RMS reprojection error (px)"), b.set_title("per view")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
