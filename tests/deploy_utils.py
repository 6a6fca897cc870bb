"""Shared helpers for the bundle and deploy tests: small real policies and isolated ROS domains."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from pirl_robot.models.factory import build_model
from pirl_robot.policy import Policy
from pirl_robot.spec import CameraSpec, PolicySpec
from pirl_robot.transforms import PolicyTransforms, Stats

PANDA_JOINTS = tuple(f"panda_joint{i}" for i in range(1, 8))


def panda_spec(cameras: tuple[CameraSpec, ...] = (), control_hz: float = 20.0, **kw) -> PolicySpec:
    """Panda with absolute joint-position actions (7 arm joints + one finger joint as the gripper)."""
    joints = PANDA_JOINTS + ("panda_finger_joint1", "panda_finger_joint2")
    args = dict(state_names=joints, action_names=PANDA_JOINTS + ("panda_finger_joint1",), action_type="joint_pos",
                action_state_index=tuple(range(8)), cameras=cameras, control_hz=control_hz, chunk_size=8,
                exec_horizon=4, robot="panda")
    args.update(kw)
    return PolicySpec(**args)


def tiny_policy(spec: PolicySpec, seed: int = 0, **model: object) -> Policy:
    """A small flow_mlp with random weights and non-trivial stats (enough to exercise every transform); `model`
    overrides its FlowMLPConfig (e.g. noise_net=False)."""
    torch.manual_seed(seed)
    model = build_model("flow_mlp", {"hidden": 32, "depth": 2, "token_dim": 8, "obs_dim": 16, **model}, spec)
    g = torch.Generator().manual_seed(seed)
    stats = PolicyTransforms(spec, Stats(torch.randn(spec.state_dim, generator=g), torch.rand(spec.state_dim) + 0.5),
                             Stats(torch.randn(spec.action_dim, generator=g), torch.rand(spec.action_dim) + 0.5))
    return Policy(spec=spec, model=model.eval(), transforms=stats)


PANDA_STATE_JOINTS = PANDA_JOINTS + ("panda_finger_joint1", "panda_finger_joint2")


def panda_home_policy(home, gripper: float, action_std: float) -> Policy:
    """A tiny policy on the Panda's 9 joint positions whose actions (7 joints + a normalised gripper) scatter
    `action_std` around `home` (9 joint positions) and `gripper`, as configs/robot/panda.yaml expects them."""
    spec = panda_spec(action_names=PANDA_JOINTS + ("gripper",), action_state_index=tuple(range(7)) + (-1,),
                      state_names=tuple(f"qpos.{j}" for j in PANDA_STATE_JOINTS))
    policy = tiny_policy(spec)
    h = torch.tensor(home, dtype=torch.float32)
    policy.transforms = PolicyTransforms(spec, Stats(h, torch.full((9,), 0.1)),
                                         Stats(torch.cat([h[:7], torch.full((1,), gripper)]),
                                               torch.full((8,), action_std)))
    return policy


def save_tiny_checkpoint(path: Path, spec: PolicySpec | None = None, seed: int = 0) -> Path:
    tiny_policy(spec or panda_spec(), seed).save(path)
    return path


def ros_env(domain_id: int | None = None) -> dict[str, str]:
    """Environment for a ROS process isolated on loopback in its own DDS domain."""
    env = dict(os.environ)
    env["RMW_IMPLEMENTATION"] = "rmw_fastrtps_cpp"
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(domain_id)
    return env


def free_domain_id() -> int:
    """A DDS domain for this test process (keeps parallel test runs of other agents out of our graph)."""
    return 1 + (os.getpid() * 7 + int.from_bytes(os.urandom(1), "little")) % 200


def ros_context(domain_id: int):
    """An rclpy context of its own on `domain_id` (several per pytest process, no global init)."""
    os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    import rclpy

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain_id)
    return ctx


def spin_in_thread(nodes, ctx):
    """Spin `nodes` on a background executor; returns a stop() function that also shuts the context down."""
    import threading

    from pirl_robot.deploy.runner import make_executor

    ex = make_executor(nodes, context=ctx)  # as `pirl deploy` spins them (the nodes' executor parameter)
    for n in nodes:
        ex.add_node(n)
    stop = threading.Event()

    def loop():
        while not stop.is_set() and ctx.ok():
            ex.spin_once(timeout_sec=0.05)

    t = threading.Thread(target=loop, daemon=True)
    t.start()

    def shutdown():
        stop.set()
        t.join(timeout=5)
        ex.shutdown()
        for n in nodes:
            n.destroy_node()
        ctx.try_shutdown()

    return shutdown


def collect_expert_chunks(task: str, episodes: int, chunk_size: int, seed0: int = 5000,
                          safety_config: str | None = None):
    """Scripted-expert demos from the sim adapter, cut into (state, action chunk, is_pad) training samples.
    safety_config: the expert runs behind the robot's safety filter and the executed actions are the labels."""
    import numpy as np
    import torch

    from sim.maniskill.config import TaskConfig
    from sim.maniskill.env import ManiSkillEnv
    from sim.maniskill.experts import make_expert

    cfg = TaskConfig(task=task, obs_mode="state", safety_config=safety_config)
    env = ManiSkillEnv(cfg)
    states, chunks, pads = [], [], []
    try:
        for ep in range(episodes):
            obs, _ = env.reset(seed=seed0 + ep)
            expert = make_expert(task, seed=ep)
            expert.reset(env.privileged())
            ss, aa = [], []
            for _ in range(cfg.max_episode_steps):
                a = expert.act(env.privileged())
                ss.append(obs["state"])
                obs, _, _, _, info = env.step(a)
                aa.append(info["executed_action"] if safety_config else a)
                if info["success"]:
                    break
            aa = np.asarray(aa)
            for i in range(len(aa)):
                idx = np.arange(i, i + chunk_size)
                states.append(ss[i])
                chunks.append(aa[np.minimum(idx, len(aa) - 1)])
                pads.append(idx >= len(aa))
    finally:
        env.close()
    return {"state": torch.tensor(np.asarray(states)), "actions": torch.tensor(np.asarray(chunks)),
            "is_pad": torch.tensor(np.asarray(pads))}


def chunk_stats(spec: PolicySpec, data: dict) -> PolicyTransforms:
    """Normalisation stats of demo chunks; action stats in model space (relative where the spec says delta)."""
    from pirl_robot.transforms import DeltaActions

    mask = torch.tensor(spec.delta_action_mask or [False] * spec.action_dim)
    index = torch.tensor(spec.action_state_index or [-1] * spec.action_dim)
    delta = DeltaActions(mask, index)({"state": data["state"], "actions": data["actions"]})["actions"]
    return PolicyTransforms(spec, Stats.of(data["state"]), Stats.of(delta[~data["is_pad"]]))


def train_bc_checkpoint(path: Path, task: str = "PushCube-v1", episodes: int = 20, steps: int = 1000,
                        seed: int = 0, safety_config: str | None = None) -> Path:
    """A flow_mlp behaviour-cloned on scripted-expert demos (the lead's `pirl train` does this plus RL)."""
    from pirl_robot.flow.sampler import ChainConfig
    from pirl_robot.rl.sft import behaviour_clone
    from sim.maniskill.config import TaskConfig
    from sim.maniskill.env import task_spec

    torch.manual_seed(seed)
    spec = task_spec(TaskConfig(task=task, obs_mode="state"))
    data = collect_expert_chunks(task, episodes, spec.chunk_size, safety_config=safety_config)
    model = build_model("flow_mlp", {"hidden": 256, "depth": 3}, spec)
    policy = Policy(spec=spec, model=model, transforms=chunk_stats(spec, data),
                    sampler=ChainConfig(num_steps=4, mode="ode"))
    behaviour_clone(policy, data, steps=steps, batch_size=128, seed=seed, progress=False)
    policy.save(path)
    return path


HOME = [0.0, 0.4, 0.0, -1.9, 0.0, 2.3, 0.8, 0.04, 0.04]  # a Panda pose inside every limit (9 joints)


def home_bundle(tmp_path: Path, control_hz: float = 20.0):
    """A bundle of a small policy whose actions stay near HOME (inside every limit of configs/robot/panda.yaml);
    returns (bundle dir, spec, the 9 joint names of its state)."""
    from pirl_robot.bundle import export_bundle

    names = PANDA_JOINTS + ("panda_finger_joint1", "panda_finger_joint2")
    spec = panda_spec(action_names=PANDA_JOINTS + ("gripper",), action_state_index=tuple(range(7)) + (-1,),
                      state_names=tuple(f"qpos.{j}" for j in names), control_hz=control_hz)
    policy = tiny_policy(spec)
    home = torch.tensor(HOME, dtype=torch.float32)
    policy.transforms = PolicyTransforms(spec, Stats(home, torch.full((9,), 0.1)),
                                         Stats(torch.cat([home[:7], torch.ones(1)]), torch.full((8,), 0.02)))
    policy.save(tmp_path / "ckpt")
    return export_bundle(tmp_path / "ckpt", tmp_path / "bundle"), spec, names
