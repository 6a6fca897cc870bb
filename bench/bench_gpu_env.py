"""GPU-parallel ManiSkill: the bare batched env next to the training loop's collection, and the policy's share.

    .venv/bin/python bench/bench_gpu_env.py                                  # PushCube, 256 / 1024 / 4096 envs, state + rgb
    .venv/bin/python bench/bench_gpu_env.py --num-envs 256 --obs state --chunks 4
    .venv/bin/python bench/bench_gpu_env.py --device cpu --num-envs 64 --obs state  # the policy rows only, on the CPU

Rows per (obs, num_envs): the bare ``BatchedManiSkillEnv`` (random small joint moves, chunked, tensors on the
device), the training loop's rollout collection (``collect_steps``: flow policy sampling + env, GAE) as a share of
the bare env (goal >= 80%), and the policy forward's share of the loop. Where ``sim_backend=physx_cuda`` cannot
run (SAPIEN downloads libPhysXGpu_64.so from GitHub on first use; no ManiSkill install; no CUDA) it prints one
"PhysX GPU library missing" line with the reason instead of a traceback, and still times the policy forward at
that batch on the device (the number that decides the loop's share once the simulator runs).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def build_policy(spec, device: str):
    import yaml

    from pirl_robot.models.factory import build_model
    from pirl_robot.policy import Policy
    from pirl_robot.transforms import PolicyTransforms, Stats

    options = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs/policy/flow_mlp.yaml").read_text())
    model = build_model("flow_mlp", options["model"], spec).to(device).eval()  # the default `pirl train` policy
    stats = PolicyTransforms(spec, Stats(torch.zeros(spec.state_dim), torch.ones(spec.state_dim)),
                             Stats(torch.zeros(spec.action_dim), torch.full((spec.action_dim,), 0.05)))
    return Policy(spec, model, stats)


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def policy_forward_s(policy, n: int, device: str, reps: int) -> float:
    """Seconds per chunk decision for n envs (encode + K-step chain + value), on synthetic observations."""
    from pirl_robot.flow.sampler import ChainConfig
    from pirl_robot.rl.rollout import act

    spec = policy.spec
    raw = {"state": torch.randn(n, spec.state_dim, device=device)}
    for cam in spec.cameras:
        raw[f"images.{cam.name}"] = torch.randint(0, 255, (n, cam.height, cam.width, 3), dtype=torch.uint8,
                                                  device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    cfg = ChainConfig(mode="mixed")
    act(policy, raw, cfg, gen)
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        act(policy, raw, cfg, gen)
    sync(device)
    return (time.perf_counter() - t) / reps


def bare_steps_per_s(env, chunks: int) -> float:
    obs = env.reset(seeds=list(range(env.num_envs)))
    h, n, steps = env.spec.exec_horizon, env.num_envs, 0
    sync(env.device)
    t = time.perf_counter()
    for _ in range(chunks):
        q = obs["state"][:, :7]
        a = torch.cat([q[:, None] + 0.05 * torch.randn(n, h, 7, device=q.device),
                       torch.rand(n, h, 1, device=q.device) * 2 - 1], -1)
        res = env.step_chunk(a)
        obs, steps = res.obs, steps + int(res.steps.sum())
    sync(env.device)
    return steps / (time.perf_counter() - t)


def loop_steps_per_s(env, policy, chunks: int) -> float:
    from pirl_robot.flow.sampler import ChainConfig
    from pirl_robot.rl.rollout import collect_steps

    obs = env.reset(seeds=list(range(env.num_envs)))
    gen = torch.Generator(device=policy.device).manual_seed(0)
    sync(env.device)
    t = time.perf_counter()
    rollout, _ = collect_steps(policy, env, obs, chunks, ChainConfig(mode="mixed"), gen, 0.99, 0.95)
    sync(env.device)
    return rollout.env_steps / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--num-envs", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--obs", nargs="+", default=["state", "rgb"], choices=["state", "rgb"])
    p.add_argument("--task", default="PushCube-v1")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--chunks", type=int, default=8, help="chunk decisions per env per measurement")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()

    from sim.maniskill.config import TaskConfig
    from sim.maniskill.env import task_spec

    print(f"device {a.device}" + (f" ({torch.cuda.get_device_name()})" if a.device.startswith("cuda") else ""))
    header = (f"| {'obs':<5} | {'envs':>5} | {'bare env steps/s':>16} | {'loop steps/s':>12} | {'loop/bare':>9} | "
              f"{'policy ms/chunk':>15} | {'policy share':>12} |")
    lines = [header, "|" + "|".join("-" * len(c) for c in header.strip("|").split("|")) + "|"]
    for obs_mode in a.obs:
        cfg = TaskConfig(task=a.task, obs_mode=obs_mode, image_size=a.image_size, sim_backend="physx_cuda",
                         render_backend="gpu")
        for n in a.num_envs:
            policy = build_policy(task_spec(cfg), a.device)
            fwd = policy_forward_s(policy, n, a.device, reps=5)
            try:
                env = make_env(cfg, n, a.device)
            except EnvUnavailable as e:
                print(f"[{obs_mode}, {n} envs] PhysX GPU library missing or no GPU simulator: {e}")
                lines.append(f"| {obs_mode:<5} | {n:>5} | {'n/a':>16} | {'n/a':>12} | {'n/a':>9} | "
                             f"{1000 * fwd:>15.1f} | {'n/a':>12} |")
                continue
            try:
                bare = bare_steps_per_s(env, a.chunks)
                loop = loop_steps_per_s(env, policy, a.chunks)
            finally:
                env.close()
            share = fwd * loop / (n * cfg.exec_horizon)  # policy seconds per env step x steps per second
            lines.append(f"| {obs_mode:<5} | {n:>5} | {bare:>16.0f} | {loop:>12.0f} | {100 * loop / bare:>8.0f}% | "
                         f"{1000 * fwd:>15.1f} | {100 * share:>11.0f}% |")
    print("\n".join(lines))


class EnvUnavailable(RuntimeError):
    pass


def make_env(cfg, n: int, device: str):
    """The batched GPU env, or EnvUnavailable with the reason (no CUDA, no ManiSkill, no PhysX GPU library)."""
    if not device.startswith("cuda"):
        raise EnvUnavailable("physx_cuda needs a CUDA device")
    try:
        from sim.maniskill.batched import BatchedManiSkillEnv, PhysXGpuMissing
    except ImportError as e:
        raise EnvUnavailable(f"ManiSkill is not installed ({e})") from None
    try:
        return BatchedManiSkillEnv(cfg, num_envs=n, seed=0, device=device)
    except ImportError as e:
        raise EnvUnavailable(f"ManiSkill is not installed ({e})") from None
    except PhysXGpuMissing as e:
        raise EnvUnavailable(str(e).splitlines()[0]) from None


if __name__ == "__main__":
    main()
