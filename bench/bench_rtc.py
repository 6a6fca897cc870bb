"""Real-time chunking under inference delay, in simulation: jerk at chunk boundaries and task success of RTC vs a
plain crossfade vs a hard switch, same episode seeds and policy noise.

    python bench/bench_rtc.py                        # ~3-5 min on 2 cores: a quick BC policy, 8 episodes per row
    python bench/bench_rtc.py --episodes 20 --delays 1 2 3
    python bench/bench_rtc.py --checkpoint outputs/pushcube/checkpoints/last    # your own policy

The deploy node's own ActionChunkBroker runs in simulated time (one tick = one env step of ManiSkill PushCube-v1,
20 Hz): a chunk requested at tick k is computed from tick k's observation and arrives d ticks later (the
artificial inference delay); the request is made d ticks early (lead_ticks = d), so the arm never waits, and
while the chunk is "in flight" it keeps executing the current one. Per chunk switch:
  switch   the new chunk replaces the current one on arrival (its first d actions, already past, skipped)
  blend    the same, crossfaded over `--blend` ticks (blend_ticks)
  rtc      the request carries the current plan from tick k on as a guided prefix (flow/rtc.py: lerobot's
           RTCProcessor), inference_delay d, guidance fading out where the plan ends; no crossfade
The first chunk of an episode comes without delay (the arm waits at rest for it in every mode).
Metrics over the executed arm-joint targets (rad): `jump` = |a[s] - plan[s]| (L2 over the 7 joints) at each
tick s where a new chunk takes over, plan[s] being what the current chunk (with any crossfade) had for that tick:
how far the switch departs from what the arm was about to do; `kink` = |a[s] - 2a[s-1] + a[s-2]| (L2 over the
7 joints) at the same ticks (the bend away from the straight continuation), mean over switches, and at every other
tick for scale; `jerk` = third difference * hz^3 (rad/s^3), RMS and max over all ticks; success = the episode
succeeded at some step. Results: stdout table, bench/results/rtc_k<K>.json. The default policy is
behaviour-cloned on the scripted expert in a few minutes (tests/deploy_utils.py), cached in bench/results/rtc_bc_*/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
MODES = ("switch", "blend", "rtc")


def quick_policy(cache: Path, demos: int, steps: int):
    from deploy_utils import train_bc_checkpoint  # the HIL test's quick behaviour cloning

    from pirl_robot.policy import Policy

    if not (cache / "policy.json").exists():
        t = time.monotonic()
        train_bc_checkpoint(cache, episodes=demos, steps=steps)
        print(f"trained a BC policy on {demos} expert demos, {steps} steps, in {time.monotonic() - t:.0f} s")
    return Policy.load(cache)


def run_episode(env, policy, seed: int, mode: str, delay: int, exec_horizon: int, blend: int) -> dict:
    from pirl_robot.deploy.broker import ActionChunkBroker

    spec = policy.spec
    broker = ActionChunkBroker(exec_horizon, blend_ticks=blend if mode == "blend" else 0, lead_ticks=delay)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    in_flight = None  # (arrival tick, actions, obs tick)
    executed, switches, jumps, success = [], [], [], False
    for tick in range(env.cfg.max_episode_steps):
        if in_flight is not None and tick >= in_flight[0]:
            planned = broker.action(tick)  # what the arm would run now without the new chunk
            broker.put(in_flight[1], in_flight[2], tick)
            switches.append(tick)
            if planned is not None:
                jumps.append(float(np.linalg.norm(broker.action(tick)[:7] - planned[:7])))
            in_flight = None
        if broker.needs_inference(tick):
            broker.mark_requested(tick)
            prefix = broker.rtc_prefix(tick, delay) if mode == "rtc" else None
            noise = rng.standard_normal((spec.chunk_size, spec.action_dim)).astype(np.float32)
            actions = policy.infer(obs, noise=noise, **({"prefix": prefix} if prefix is not None else {}))["actions"]
            if broker.chunks == 0:  # the first chunk: no delay, the arm is at rest
                broker.put(actions, tick, tick)
            else:
                in_flight = (tick + delay, actions, tick)
        a = broker.action(tick)
        if a is None:  # cannot happen with lead_ticks = delay; hold the last target if it did
            a = executed[-1]
        executed.append(np.asarray(a, dtype=np.float64))
        obs, _, terminated, _, info = env.step(a)
        success = success or bool(info["success"])
        if terminated:
            break
    a = np.asarray(executed)[:, :7]
    hz = spec.control_hz
    jerk = np.diff(a, n=3, axis=0) * hz ** 3
    second = np.linalg.norm(a[2:] - 2 * a[1:-1] + a[:-2], axis=1)  # second[i] belongs to tick i + 2
    at_switch = {s for s in switches if 2 <= s < len(a)}
    kinks = [second[s - 2] for s in sorted(at_switch)]
    within = [second[i - 2] for i in range(2, len(a)) if i not in at_switch]
    return {"success": success, "steps": len(a), "kinks": kinks, "within": within, "jumps": jumps,
            "jerk_sq": float((jerk ** 2).sum()), "jerk_n": int(jerk.shape[0]),
            "jerk_max": float(np.abs(jerk).max()) if jerk.size else 0.0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="policy checkpoint directory (default: a quick BC policy, cached)")
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--delays", type=int, nargs="+", default=[1, 2, 3], help="inference delays in control periods")
    ap.add_argument("--exec-horizon", type=int, default=4, help="actions run per chunk (the chunk has 8)")
    ap.add_argument("--blend", type=int, default=3, help="crossfade ticks of the blend mode")
    ap.add_argument("--demos", type=int, default=100, help="expert demos of the quick BC policy")
    ap.add_argument("--bc-steps", type=int, default=3000, help="training steps of the quick BC policy")
    ap.add_argument("--seed0", type=int, default=2000)
    ap.add_argument("--num-steps", type=int, default=0, help="denoising steps K (0: the policy's own)")
    ns = ap.parse_args(argv)

    from pirl_robot.flow.rtc import load_lerobot_rtc
    from pirl_robot.policy import Policy
    from sim.maniskill.config import TaskConfig
    from sim.maniskill.env import ManiSkillEnv

    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(exist_ok=True)
    if ns.checkpoint:
        policy = Policy.load(ns.checkpoint)
    else:
        policy = quick_policy(results_dir / f"rtc_bc_{ns.demos}x{ns.bc_steps}", ns.demos, ns.bc_steps)
    if ns.num_steps:
        import dataclasses

        policy.sampler = dataclasses.replace(policy.sampler, num_steps=ns.num_steps)
    load_lerobot_rtc()
    env = ManiSkillEnv(TaskConfig(task="PushCube-v1", obs_mode="state"))
    rows = []
    t0 = time.monotonic()
    try:
        for delay in ns.delays:
            for mode in MODES:
                eps = [run_episode(env, policy, ns.seed0 + i, mode, delay, ns.exec_horizon, ns.blend)
                       for i in range(ns.episodes)]
                kinks = [k for e in eps for k in e["kinks"]]
                within = [k for e in eps for k in e["within"]]
                jumps = [j for e in eps for j in e["jumps"]]
                rows.append({"delay": delay, "mode": mode, "episodes": len(eps),
                             "success": float(np.mean([e["success"] for e in eps])),
                             "kink_mean": float(np.mean(kinks)) if kinks else float("nan"),
                             "kink_p90": float(np.percentile(kinks, 90)) if kinks else float("nan"),
                             "kink_within_mean": float(np.mean(within)), "jump_mean": float(np.mean(jumps)),
                             "jump_p90": float(np.percentile(jumps, 90)),
                             "jerk_rms": float(np.sqrt(sum(e["jerk_sq"] for e in eps) / sum(e["jerk_n"] for e in eps))),
                             "jerk_max": float(max(e["jerk_max"] for e in eps)), "switches": len(kinks)})
                r = rows[-1]
                print(f"d={delay} {mode:6s} success {r['success']:.2f}  jump {r['jump_mean']:.4f}  kink "
                      f"{r['kink_mean']:.4f} rad (p90 {r['kink_p90']:.4f}, within chunks {r['kink_within_mean']:.4f})  "
                      f"jerk rms {r['jerk_rms']:.0f} max {r['jerk_max']:.0f} rad/s^3", flush=True)
    finally:
        env.close()
    print(f"\n{ns.episodes} episodes per row (seeds {ns.seed0}..{ns.seed0 + ns.episodes - 1}, same noise), "
          f"K={policy.sampler.num_steps} denoising steps, chunk {policy.spec.chunk_size}, exec horizon "
          f"{ns.exec_horizon}, blend {ns.blend}; {time.monotonic() - t0:.0f} s")
    print("| delay (periods) | mode | success | jump from the plan at switch, mean / p90 (rad) | kink at switch, "
          "mean / p90 (rad) | kink within chunks, mean (rad) | jerk RMS / max (rad/s^3) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['delay']} | {r['mode']} | {r['success']:.2f} | {r['jump_mean']:.4f} / {r['jump_p90']:.4f} | "
              f"{r['kink_mean']:.4f} / {r['kink_p90']:.4f} | "
              f"{r['kink_within_mean']:.4f} | {r['jerk_rms']:.0f} / {r['jerk_max']:.0f} |")
    name = f"rtc_k{policy.sampler.num_steps}.json"
    (results_dir / name).write_text(json.dumps({"args": vars(ns), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
