"""The deploy node with `chunking: rtc` over DDS on loopback: every chunk after the first is sampled as the
continuation of the plan the broker held at the request's tick, exactly as `Policy.infer(prefix=...)` gives it
for the recorded observation and noise, and its frozen entries follow that plan where a chunk sampled on its own
does not."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from deploy_utils import HOME, PANDA_JOINTS, free_domain_id, home_bundle, ros_context, ros_env, spin_in_thread
from pirl_robot.bundle import load_bundle
from pirl_robot.flow.rtc import ChunkPrefix

DELAY = 2


def test_node_samples_each_chunk_as_the_continuation_of_the_plan(tmp_path):
    from rclpy.lifecycle import TransitionCallbackReturn

    from pirl_robot.deploy.node import DeployNode
    from pirl_robot.deploy.params import ros_parameters
    from pirl_robot.deploy.taps import ChunkRecord, TickRecord

    bundle, spec, names = home_bundle(tmp_path)
    domain = free_domain_id()
    driver = subprocess.Popen([sys.executable, str(Path(__file__).with_name("ros_publisher.py")), json.dumps(
        {"joints": dict(zip(names, HOME)), "joint_states_topic": "/rtc/joint_states", "rate_hz": 50.0})],
        env=ros_env(domain))
    ctx = ros_context(domain)
    params = dict(bundle=str(bundle), robot="panda", control_hz=spec.control_hz, state_names=list(spec.state_names),
                  action_names=list(spec.action_names), action_state_index=list(spec.action_state_index),
                  joint_states_topic="/rtc/joint_states", command_topic="/rtc/cmd",
                  command_names=list(PANDA_JOINTS) + ["panda_finger_joint1"], safety_config="unfiltered",
                  max_state_age_ms=300.0, seed=3, chunking="rtc", lead_ticks=DELAY, rtc_inference_delay=DELAY)
    deploy = DeployNode("rtc_deploy", context=ctx, parameter_overrides=ros_parameters(params))
    observations, chunks, lock = {}, [], threading.Lock()

    def on_record(rec):
        with lock:
            if isinstance(rec, TickRecord) and rec.obs is not None:
                observations[rec.tick] = rec.obs
            elif isinstance(rec, ChunkRecord):
                chunks.append(rec)

    deploy.taps.append(on_record)
    stop = spin_in_thread([deploy], ctx)
    try:
        assert deploy.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert deploy.trigger_activate() == TransitionCallbackReturn.SUCCESS
        deploy.start_policy()
        deadline = time.monotonic() + 30
        while len(chunks) < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        deploy.stop_policy()
    finally:
        stop()
        driver.terminate()
        driver.wait(timeout=10)
    assert len(chunks) >= 8 and all(c.error is None for c in chunks), chunks[:1]
    policy = load_bundle(bundle)
    guided_err, free_err = [], []
    for prev, cur in zip(chunks, chunks[1:]):
        plan = prev.actions[cur.obs_tick - prev.obs_tick:].astype(np.float32)
        prefix = ChunkPrefix(plan, DELAY, len(plan))
        obs = observations[cur.obs_tick]
        np.testing.assert_array_equal(cur.actions, policy.infer(obs, noise=cur.noise, prefix=prefix)["actions"])
        free = policy.infer(obs, noise=cur.noise)["actions"]
        guided_err.append(np.abs(cur.actions[:DELAY] - plan[:DELAY]).mean())
        free_err.append(np.abs(free[:DELAY] - plan[:DELAY]).mean())
    assert np.mean(guided_err) < 0.35 * np.mean(free_err), (np.mean(guided_err), np.mean(free_err))
