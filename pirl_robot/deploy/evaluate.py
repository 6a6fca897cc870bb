"""Success rates of one bundle two ways: over ROS 2 against the simulated arm (hardware in the loop) and directly
in the simulator, on the same episode seeds and the same policy noise, so the two can be put side by side.

    results = evaluate_over_ros(client_node, episodes=10)          # deploy node + sim arm node already running
    sim = evaluate_in_sim(policy, TaskConfig(...), [r["seed"] for r in results],
                          [r["noise_seed"] for r in results])
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class EpisodeResult:
    seed: int
    noise_seed: int
    success_once: bool
    success_at_end: bool
    steps: int
    commands: int = 0  # commands the arm received during the episode (HIL only)
    final_obj_xy: tuple[float, float] | None = None

    @property
    def success(self) -> bool:
        """The one success definition of every evaluation (``sim.vector_types.EpisodeStats.success``): the task's
        success flag held at some step of the episode."""
        return self.success_once

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def evaluate_in_sim(policy, task_cfg, seeds: list[int], noise_seeds: list[int]) -> list[EpisodeResult]:
    """The bundle's policy run directly in the simulator, drawing chunk noise exactly as the deploy node does."""
    from sim.maniskill.env import ManiSkillEnv

    spec = policy.spec
    env = ManiSkillEnv(task_cfg)
    out = []
    try:
        for seed, noise_seed in zip(seeds, noise_seeds):
            rng = np.random.default_rng(noise_seed)
            obs, info = env.reset(seed=seed)
            steps, success_once = 0, False
            while steps < task_cfg.max_episode_steps:
                noise = rng.standard_normal(policy.noise_shape).astype(np.float32)
                for a in policy.infer(obs, noise=noise)["actions"][:spec.exec_horizon]:
                    obs, _, _, _, info = env.step(a)
                    steps += 1
                    success_once = success_once or bool(info["success"])
                    if steps >= task_cfg.max_episode_steps:
                        break
            obj = env.privileged()["obj_pose"]
            out.append(EpisodeResult(seed, noise_seed, success_once, bool(info["success"]), steps,
                                     final_obj_xy=(float(obj[0]), float(obj[1]))))
    finally:
        env.close()
    return out


class HilClient:
    """Drives episodes from outside: reset the simulated arm, start the deploy node, wait for the episode to end.

    Runs in its own process (or next to the nodes) and talks to them only through their ROS interfaces.
    """

    def __init__(self, node, sim_node: str = "/sim_arm_node", deploy_node: str = "/deploy_node",
                 task_state_topic: str = "/task_state"):
        from sensor_msgs.msg import JointState
        from std_msgs.msg import String
        from std_srvs.srv import Trigger

        from pirl_robot.drivers.ros_msgs import qos

        self.node = node
        self.status: dict | None = None
        self.task_state: dict[str, float] = {}
        node.create_subscription(String, f"{sim_node}/episode", self._on_status, qos("reliable", 10))
        node.create_subscription(JointState, task_state_topic, self._on_task, qos("sensor", 5))
        from diagnostic_msgs.msg import DiagnosticArray

        from pirl_robot.deploy.diagnostics import status_name

        self.deploy_status = status_name(deploy_node.rsplit("/", 1)[-1])
        self.diagnostics: dict[str, str] = {}  # the deploy node's latest /diagnostics values
        self.diagnostics_at = 0.0              # when they arrived (time.monotonic())
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.reset_srv = node.create_client(Trigger, f"{sim_node}/reset")
        self.start_srv = node.create_client(Trigger, f"{deploy_node}/start")
        self.stop_srv = node.create_client(Trigger, f"{deploy_node}/stop")

    def _on_status(self, msg) -> None:
        self.status = json.loads(msg.data)

    def _on_task(self, msg) -> None:
        self.task_state = dict(zip(msg.name, msg.position))

    def _on_diagnostics(self, msg) -> None:
        for st in msg.status:
            if st.name == self.deploy_status:
                self.diagnostics = {kv.key: kv.value for kv in st.values}
                self.diagnostics_at = time.monotonic()

    def wait_at_rest(self, since: float, timeout: float) -> None:
        """Until the deploy node reports (in /diagnostics sent after `since`) that it is not executing and its
        filter no longer streams commands: only then may the simulated arm be reset. A command still in flight
        would otherwise step the new episode toward the old pose (a real arm is never teleported under one)."""
        from pirl_robot.safety.filter import IN_MOTION

        moving = {str(m) for m in IN_MOTION}
        self.wait(lambda: self.diagnostics_at > since and self.diagnostics.get("executing") == "False"
                  and self.diagnostics.get("safety_mode", "") not in moving, timeout,
                  "the deploy node to come to rest (its /diagnostics)")

    def call(self, client, timeout: float = 10.0):
        from std_srvs.srv import Trigger

        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {client.srv_name} not available")
        future = client.call_async(Trigger.Request())
        deadline = time.monotonic() + timeout
        while not future.done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"service {client.srv_name} did not answer")
            time.sleep(0.005)
        res = future.result()
        if not res.success:
            raise RuntimeError(f"{client.srv_name}: {res.message}")
        return res

    def wait(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what} (last status {self.status})")
            time.sleep(0.01)

    def run_episode(self, noise_seed_base: int, timeout: float = 30.0) -> EpisodeResult:
        self.wait(lambda: self.status is not None, timeout, "the simulated arm's episode status")
        stopped = time.monotonic()
        self.call(self.stop_srv)
        self.wait_at_rest(stopped, timeout)
        res = json.loads(self.call(self.reset_srv).message)
        episode, seed = res["episode"], res["seed"]
        self.wait(lambda: self.status["episode"] == episode and self.status["status"] == "ready", timeout, "reset")
        started = self.call(self.start_srv).message  # "executing episode N"
        deploy_episode = int(started.rsplit(" ", 1)[-1])
        self.wait(lambda: self.status["episode"] == episode and self.status["status"] == "done", timeout,
                  "the episode to finish")
        self.call(self.stop_srv)
        st = self.status
        obj = (self.task_state.get("obj_pose.x", np.nan), self.task_state.get("obj_pose.y", np.nan))
        return EpisodeResult(seed, noise_seed_base + deploy_episode, bool(st["success_once"]), bool(st["success"]),
                             int(st["step"]), int(st.get("commands", 0)), obj)


def evaluate_over_ros(node, episodes: int, noise_seed_base: int, timeout: float = 30.0) -> list[EpisodeResult]:
    client = HilClient(node)
    return [client.run_episode(noise_seed_base, timeout) for _ in range(episodes)]


def success_rate(results: list[EpisodeResult]) -> float:
    return float(np.mean([r.success for r in results])) if results else float("nan")


def success_interval(results: list[EpisodeResult]) -> tuple[float, float]:
    """The 95% Wilson interval of the success rate (the interval `pirl eval` and training report)."""
    from pirl_robot.evaluate import wilson_interval

    return wilson_interval(sum(r.success for r in results), len(results))
