"""Shared by the record / replay / report tests: episodes recorded for real through the hardware-in-the-loop
setup (deploy node + ManiSkill sim arm node over loopback DDS, `pirl deploy --processes several`), made once per
pytest session and reused; and a tap-level episode generator for the crash tests."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tiny_bundle(out: Path, seed: int = 0, obs_mode: str = "state") -> Path:
    """A flow_mlp with random weights for PushCube (state, or rgb: the camera), exported as a bundle."""
    from deploy_utils import tiny_policy
    from pirl_robot.bundle import export_bundle
    from sim.maniskill.config import TaskConfig
    from sim.maniskill.env import task_spec

    tiny_policy(task_spec(TaskConfig(task="PushCube-v1", obs_mode=obs_mode)), seed=seed).save(
        out.parent / f"{out.name}_ckpt")
    return export_bundle(out.parent / f"{out.name}_ckpt", out)


def record_hil(record_dir: Path, bundle: Path, episodes: int, params: dict | None = None, outcomes: dict | None = None,
               estop_after_s: dict | None = None, timeout: float = 120.0,
               config: str = "panda_maniskill.yaml", processes: str = "several") -> dict:
    """Run `episodes` HIL episodes with recording on; returns {"results": [EpisodeResult...], "seconds": ...}.

    outcomes: {episode number (1-based): bool} entered by the operator service after that episode.
    estop_after_s: {episode number: seconds}: press the e-stop (~/estop) that long into the episode (it is reset
    after the episode)."""
    from rclpy.node import Node
    from std_srvs.srv import Trigger

    from pirl_robot.deploy.operator_keys import OperatorKeys

    from deploy_utils import free_domain_id, ros_context, ros_env, spin_in_thread
    from pirl_robot.deploy.evaluate import HilClient

    params = {"record_dir": str(record_dir), "record_operator": "pytest",
              "record_outcome": "sim:/sim_arm_node/episode", **(params or {})}
    args = [a for k, v in params.items() for a in ("--param", f"deploy_node.{k}={v}")]
    domain = free_domain_id()
    proc = subprocess.Popen([sys.executable, "-m", "pirl_robot.deploy.runner", "--bundle", str(bundle),
                             "--processes", processes, "--log-level", "warn", "--config", config, *args],
                            env={**ros_env(domain), "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    ctx = ros_context(domain)
    node = Node("record_test_client", context=ctx)
    client = HilClient(node)
    keys = OperatorKeys(node, fd=0)  # not started: no terminal; press() calls the services
    estop_srv = node.create_client(Trigger, "/deploy_node/estop")
    reset_srv = node.create_client(Trigger, "/deploy_node/reset_estop")
    stop = spin_in_thread([node], ctx)
    t0 = time.monotonic()
    try:
        results = []
        for k in range(1, episodes + 1):
            timer = None
            if estop_after_s and k in estop_after_s:
                timer = threading.Timer(estop_after_s[k], lambda: estop_srv.call_async(Trigger.Request()))
                client.wait(lambda: client.status is not None, timeout, "the sim status")
                started = client.status["episode"]
                # the timer starts when the sim's next episode starts running (after the reset and ~/start)
                threading.Thread(target=lambda: (client.wait(lambda: client.status["episode"] > started and
                                                             client.status["status"] == "running", timeout,
                                                             "the episode to run"), timer.start()),
                                 daemon=True).start()
            results.append(client.run_episode(noise_seed_base=0, timeout=timeout))
            if timer is not None:
                timer.join()
                client.call(reset_srv)
            if outcomes and k in outcomes:  # the operator's key (y / n) -> ~/episode_outcome
                said = io.StringIO()
                keys.out = said
                keys.press("y" if outcomes[k] else "n")
                assert f"episode_outcome: episode {k}: {'success' if outcomes[k] else 'failure'}" in \
                    said.getvalue(), said.getvalue()
        # the episodes are committed by the recorder's worker process; wait for all before stopping the nodes
        deadline = time.monotonic() + timeout
        while len(list(Path(record_dir).glob("*/episodes/episode_*/meta/pirl_episode.json"))) < episodes:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise TimeoutError(f"episodes not committed in {record_dir}: "
                                   f"{sorted(p.name for p in Path(record_dir).glob('*/*/*'))}")
            time.sleep(0.2)
        time.sleep(0.5)  # a late outcome refresh
        seconds = time.monotonic() - t0
    finally:
        stop()
        proc.terminate()
        proc.wait(timeout=60)
    return {"results": results, "seconds": seconds}


def shared_hil_recording(tmp_path_factory) -> dict:
    """One HIL recording per pytest session, made by the first test that asks and reused by the others: a tiny
    random bundle, the safety filter of the simulated Panda (config/safety/panda_maniskill.yaml), 2 episodes;
    episode 1's outcome comes from the simulator, in episode 2 the e-stop is pressed after 1 s and the operator
    marks it a failure; the live Rerun stream goes to live.rrd."""
    base = tmp_path_factory.getbasetemp() / "shared_hil_recording"
    done = base / "done.json"
    if not done.is_file():
        base.mkdir(parents=True, exist_ok=True)
        bundle = tiny_bundle(base / "bundle")
        run = record_hil(base / "rec", bundle, episodes=2, outcomes={2: False}, estop_after_s={2: 1.0},
                         params={"rerun": str(base / "live.rrd")})
        done.write_text(json.dumps({"bundle": str(bundle), "rec": str(base / "rec"), "seconds": run["seconds"],
                                    "results": [r.as_dict() for r in run["results"]]}))
    return json.loads(done.read_text())
