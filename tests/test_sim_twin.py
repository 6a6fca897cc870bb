"""The simulated twin of a calibrated camera: a known 3-D point in the ManiSkill scene lands on the pixel the
calibration predicts (distortion included), at the calibration's resolution and at a policy's image size."""

import numpy as np
import pytest

from calibration.calib_file import CalibrationFile
from calibration.synthetic import look_at

pytestmark = pytest.mark.sim

K_CAL = np.array([[610.0, 0.0, 322.5], [0.0, 608.0, 236.0], [0.0, 0.0, 1.0]])
D_CAL = np.array([-0.12, 0.09, 0.0008, -0.0005, -0.02])
BASE = np.array([-0.615, 0.0, 0.0])  # PushCube's robot base in the world
MARKERS_BASE = np.array([[0.55, 0.08, 0.03], [0.75, -0.15, 0.10], [0.40, 0.20, 0.01], [0.5, -0.25, 0.05], [0.8, 0.2, 0.05]])


def calibration(tmp_path=None) -> CalibrationFile:
    """A camera 1.1 m in front of and above the robot, looking back at the workspace (pose in the base frame)."""
    T_base_cam = look_at(np.array([1.25, 0.45, 0.55]), np.array([0.6, 0.0, 0.08]))
    return CalibrationFile("base_camera", 640, 480, K_CAL, D_CAL).with_pose("eye_to_hand", "panda_link0", T_base_cam)


def _marker_env_id() -> str:
    """PushCube with small spheres at MARKERS_BASE (registered once per process)."""
    import sapien
    from mani_skill.envs.tasks.tabletop.push_cube import PushCubeEnv
    from mani_skill.utils.registration import REGISTERED_ENVS, register_env

    name = "PushCubeTwinMarkers-test"
    if name not in REGISTERED_ENVS:
        @register_env(name, max_episode_steps=50)
        class Markers(PushCubeEnv):
            def _load_scene(self, options):
                super()._load_scene(options)
                self.markers = []
                for k, p in enumerate(MARKERS_BASE):
                    b = self.scene.create_actor_builder()
                    b.add_sphere_visual(radius=0.01, material=sapien.render.RenderMaterial(base_color=[0, 1, 0, 1]))
                    b.initial_pose = sapien.Pose(p=(p + BASE).tolist())
                    self.markers.append(b.build_kinematic(name=f"marker{k}"))
    return name


@pytest.mark.parametrize("size", [(640, 480), (128, 128)])
def test_known_point_projects_to_the_calibrated_pixel(size):
    import gymnasium as gym
    import mani_skill.envs  # noqa: F401

    from sim.maniskill.twin import CameraTwin

    twin = CameraTwin.from_calibration(calibration(), "PushCube-v1", *size)
    env = gym.make(_marker_env_id(), obs_mode="rgb+segmentation", render_backend="cpu", sim_backend="cpu",
                   sensor_configs=twin.sensor_configs())
    try:
        obs, _ = env.reset(seed=0)
        u = env.unwrapped
        assert np.allclose(u.agent.robot.pose.p[0].numpy(), BASE, atol=1e-6)
        seg = twin.distort(obs["sensor_data"]["base_camera"]["segmentation"][0].numpy()[..., 0].astype(np.int32),
                           nearest=True)
        assert seg.shape == (size[1], size[0])
        expected = twin.project_world(MARKERS_BASE + BASE)
        for k, marker in enumerate(u.markers):
            v, c = np.nonzero(seg == marker.per_scene_id[0].item())
            assert len(v) >= 3, f"marker {k} not visible"
            seen = np.array([c.mean(), v.mean()])
            print(f"{size} marker {k}: seen {seen.round(2)} predicted {expected[k].round(2)} "
                  f"({np.linalg.norm(seen - expected[k]):.2f} px, {len(v)} px)")
            assert np.linalg.norm(seen - expected[k]) < 1.0
    finally:
        env.close()


def _fk(urdf: str, link: str, qpos: np.ndarray) -> np.ndarray:
    """T_base_link of ManiSkill's Panda URDF at the simulator's joint positions (the calibration's view of it)."""
    import torch

    from sim.maniskill.twin import urdf_chain

    chain = urdf_chain(urdf)
    q = torch.zeros(chain.n_joints, dtype=torch.float64)
    names = chain.get_joint_parameter_names()
    for k, name in enumerate([f"panda_joint{i}" for i in range(1, 8)] + ["panda_finger_joint1", "panda_finger_joint2"]):
        if name in names:
            q[names.index(name)] = float(qpos[k])
    return chain.forward_kinematics(q)[link].get_matrix()[0].numpy()


def test_eye_in_hand_camera_rides_on_the_wrist_and_projects_as_calibrated():
    """An eye-in-hand calibration (camera pose on panda_hand) becomes ManiSkill's wrist camera (panda_wristcam,
    mounted on camera_link): markers placed in front of the camera land where the calibration, composed with the
    arm's FK at the simulator's joints, projects them; a hand calibration given as the fixed camera is refused."""
    import gymnasium as gym
    import mani_skill.envs  # noqa: F401
    import sapien

    from calibration.poses import make_T
    from sim.maniskill.twin import HAND_ROBOT, CameraTwin, TwinError, hand_urdf

    T_hand_cam = make_T(np.eye(3), [0.06, 0.0, 0.03])  # 6 cm off the hand's centre, looking along the fingers
    cal = CalibrationFile("hand_camera", 640, 480, K_CAL, D_CAL).with_pose("eye_in_hand", "panda_hand", T_hand_cam)
    twin = CameraTwin.from_calibration(cal, "PushCube-v1", 160, 120)
    assert twin.uid == "hand_camera" and twin.on_hand
    env = gym.make(_marker_env_id(), obs_mode="rgb+segmentation", render_backend="cpu", sim_backend="cpu",
                   robot_uids=HAND_ROBOT, sensor_configs=twin.sensor_configs())
    try:
        env.reset(seed=0)
        u = env.unwrapped
        T_base_hand = _fk(hand_urdf(), "panda_hand", u.agent.robot.get_qpos()[0].numpy())
        T_world_cam = make_T(np.eye(3), BASE) @ T_base_hand @ T_hand_cam
        in_cam = np.array([[0.03, 0.02, 0.12], [-0.03, -0.02, 0.14], [0.04, -0.025, 0.13], [-0.035, 0.03, 0.11]])
        world = (T_world_cam @ np.c_[in_cam, np.ones(len(in_cam))].T).T[:, :3]
        for marker, p in zip(u.markers, world):
            marker.set_pose(sapien.Pose(p=p.tolist()))
        obs = u.get_obs()
        seg = twin.distort(obs["sensor_data"]["hand_camera"]["segmentation"][0].numpy()[..., 0].astype(np.int32),
                           nearest=True)
        expected = twin.project_world(world, T_base_parent=T_base_hand)
        for k, marker in enumerate(u.markers[: len(world)]):
            v, c = np.nonzero(seg == marker.per_scene_id[0].item())
            assert len(v) >= 3, f"marker {k} not visible"
            seen = np.array([c.mean(), v.mean()])
            print(f"hand marker {k}: seen {seen.round(2)} predicted {expected[k].round(2)}")
            assert np.linalg.norm(seen - expected[k]) < 1.0
    finally:
        env.close()
    from sim.maniskill.config import TaskConfig
    from sim.maniskill.env import ManiSkillEnv, task_spec

    path = str(cal.save(__import__("tempfile").mkdtemp() + "/hand.yaml"))
    with pytest.raises(TwinError, match="needs eye_to_hand"):
        ManiSkillEnv(TaskConfig(task="PushCube-v1", obs_mode="rgb", camera_calibration=path))
    cfg = TaskConfig(task="PushCube-v1", obs_mode="rgb", image_size=32, hand_camera_calibration=path)
    assert [c.name for c in task_spec(cfg).cameras] == ["base_camera", "hand_camera"]
    env = ManiSkillEnv(cfg)  # the policy's env: both cameras, the wrist one as calibrated
    try:
        obs, _ = env.reset(seed=1)
        assert sorted(obs["images"]) == ["base_camera", "hand_camera"]
        assert obs["images"]["hand_camera"].shape == (32, 32, 3) and obs["images"]["hand_camera"].std() > 5
    finally:
        env.close()
