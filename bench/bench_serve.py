"""Added latency of remote inference (`pirl serve` over loopback) next to the in-process path, per chunk, with the
policy's forward pass taken out (goal: p99 <= 2 ms for a flow-MLP chunk).

    python bench/bench_serve.py                  # ~1 min: flow MLP on the PushCube state, 1000 chunks per row
    python bench/bench_serve.py --image 224      # plus a 224x224 RGB camera in every observation (~150 kB)
    python bench/bench_serve.py --chunks 3000    # steadier tails

The server runs in its own process (`pirl serve`, as on a GPU machine); this process is the robot computer.
Rows (ms per chunk, forward excluded):
  in-process worker   the deploy node's InferenceWorker around the local Policy: submit -> chunk callback, minus the
                      forward (the thread hand-offs the node pays either way)
  remote worker       the same worker around RemotePolicy: submit -> chunk callback, minus the server's forward
  remote call         RemotePolicy.infer alone: round trip minus the server's forward (serialisation, websocket,
                      loopback, the server's parsing and checks): the added latency of the remote path
  (health round trip)  a `health` request: the same connection with a small message and no policy
                      (the floor of this transport on this machine)
Chunks are requested one at a time with a pause between them (as the node does, once per exec horizon), so every
call wakes sleeping threads, as on a robot. Results: stdout table and bench/results/serve.json. Tails need an
otherwise idle machine; on a shared one they mostly measure the neighbours.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TOKEN = "bench-serve"


def make_bundle(tmp: Path, image: int) -> Path:
    import torch

    from pirl_robot.bundle import export_bundle
    from pirl_robot.models.factory import build_model
    from pirl_robot.policy import Policy
    from pirl_robot.spec import CameraSpec
    from pirl_robot.transforms import PolicyTransforms, Stats
    from sim.maniskill.config import TaskConfig
    from sim.maniskill.env import task_spec

    spec = task_spec(TaskConfig(task="PushCube-v1", obs_mode="state"))
    if image:
        import dataclasses

        spec = dataclasses.replace(spec, cameras=(CameraSpec("base", image, image),))
    torch.manual_seed(0)
    model = build_model("flow_mlp", {"hidden": 256, "depth": 3}, spec)  # the size `pirl train` fine-tunes
    transforms = PolicyTransforms(spec, Stats(torch.zeros(spec.state_dim), torch.ones(spec.state_dim)),
                                  Stats(torch.zeros(spec.action_dim), torch.ones(spec.action_dim)))
    Policy(spec=spec, model=model.eval(), transforms=transforms).save(tmp / "ckpt")
    return export_bundle(tmp / "ckpt", tmp / "bundle")


def observation(spec, rng) -> dict:
    obs = {"state": rng.standard_normal(spec.state_dim).astype(np.float32)}
    obs["images"] = {c.name: rng.integers(0, 256, (c.height, c.width, 3), dtype=np.uint8) for c in spec.cameras}
    return obs


def summary(ms: list[float]) -> dict:
    v = np.asarray(ms)
    return {"n": int(v.size), "p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99)),
            "max": float(v.max())}


def worker_overhead(policy, forward_ms, n: int, pause_s: float, rng) -> list[float]:
    """InferenceWorker submit -> callback minus the forward (forward_ms(result) gives it per chunk)."""
    from pirl_robot.deploy.inference import InferenceWorker

    done, box = threading.Event(), {}

    def on_result(result):
        box["t"], box["r"] = time.perf_counter(), result
        done.set()

    worker = InferenceWorker(policy, on_result, seed=0)
    out = []
    try:
        for i in range(n):
            obs = observation(policy.spec, rng)
            done.clear()
            t0 = time.perf_counter()
            worker.submit(obs, i)
            done.wait(10)
            assert box["r"].error is None, box["r"].error
            out.append((box["t"] - t0) * 1e3 - forward_ms(box["r"]))
            time.sleep(pause_s)
    finally:
        worker.close()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=1000, help="chunks per row (after 50 warm-up chunks)")
    ap.add_argument("--pause-ms", type=float, default=5.0, help="pause between chunks")
    ap.add_argument("--image", type=int, default=0, help="add a square RGB camera of this size (0: state only)")
    ap.add_argument("--port", type=int, default=18790)
    ns = ap.parse_args(argv)

    from pirl_robot.bundle import load_bundle
    from pirl_robot.deploy.realtime import GIL_SWITCH_INTERVAL_S
    from pirl_robot.serve.client import RemotePolicy, RemotePolicyError

    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)  # as the deploy node's process (deploy/realtime.py)

    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    bundle = make_bundle(tmp, ns.image)
    local = load_bundle(bundle)
    env = {**os.environ, "PIRL_SERVE_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, "-m", "pirl_robot.cli", "serve", str(bundle), "--port", str(ns.port)],
                              env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                remote = RemotePolicy(f"remote://127.0.0.1:{ns.port}", token=TOKEN, timeout_s=5.0)
                break
            except RemotePolicyError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.3)
        rng = np.random.default_rng(0)
        pause = ns.pause_ms / 1e3
        for _ in range(50):  # warm-up both paths
            local.infer(observation(local.spec, rng))
            remote.infer(observation(local.spec, rng))
        rows = {}
        rows["in-process worker"] = worker_overhead(local, lambda r: r.latency_s * 1e3, ns.chunks, pause, rng)
        server_forward: dict[int, float] = {}

        class Timed:  # RemotePolicy as the worker sees it, remembering the server's forward per call
            spec, noise_shape = remote.spec, remote.noise_shape

            def infer(self, obs, noise=None):
                out = remote.infer(obs, noise=noise)
                server_forward[id(out["actions"])] = remote.last_timing["infer_ms"]
                return out

        rows["remote worker"] = worker_overhead(Timed(), lambda r: server_forward[id(r.actions)], ns.chunks, pause,
                                                rng)
        call, forward = [], []
        for _ in range(ns.chunks):
            obs = observation(local.spec, rng)
            t0 = time.perf_counter()
            remote.infer(obs)
            total = (time.perf_counter() - t0) * 1e3
            call.append(total - remote.last_timing["infer_ms"])
            forward.append(remote.last_timing["infer_ms"])
            time.sleep(pause)
        rows["remote call"] = call
        health = []
        for _ in range(ns.chunks):
            t0 = time.perf_counter()
            remote.health()
            health.append((time.perf_counter() - t0) * 1e3)
            time.sleep(pause)
        rows["(health round trip)"] = health
        rows["(server forward)"] = forward
    finally:
        server.terminate()
        server.wait(timeout=30)
    stats = {k: summary(v) for k, v in rows.items()}
    images = observation(local.spec, rng)["images"].values()
    obs_bytes = sum(np.asarray(v).nbytes for v in images) + 4 * local.spec.state_dim
    print(f"\nflow MLP (hidden 256, depth 3), chunk {local.spec.chunk_size}x{local.spec.action_dim}, observation "
          f"{obs_bytes} B, {ns.chunks} chunks per row, {ns.pause_ms} ms apart; ms per chunk, forward excluded")
    print(f"{'path':22s} {'p50':>8s} {'p99':>8s} {'max':>8s}")
    for k, s in stats.items():
        print(f"{k:22s} {s['p50']:8.3f} {s['p99']:8.3f} {s['max']:8.2f}")
    out = ROOT / "bench" / "results" / f"serve{'_img%d' % ns.image if ns.image else ''}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(ns), "observation_bytes": obs_bytes, "ms": stats,
                               "load_avg": os.getloadavg()}, indent=2))
    print(f"load average {os.getloadavg()[0]:.1f}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
