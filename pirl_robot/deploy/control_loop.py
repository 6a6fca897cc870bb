"""The deploy node's control loop, without ROS: once per tick observe -> broker -> safety -> command.

    loop = ControlLoop(inputs, arm, safety, broker, policy, settings, log=print_log)
    loop.taps.append(fn)        # typed records (deploy/taps.py) after each tick, chunk and batch of safety events
    loop.start()                # the tick thread (the node's on_activate)
    loop.start_policy()         # execute; loop.stop_policy(wait_s=3.0) brakes to rest; loop.estop("why")
    loop.stop(); loop.close()   # stop ticking (on_deactivate); release the inference thread (on_cleanup)

`settings` is the node's parameter dict (deploy/params.py: control_hz, tick_source, max_wait_ms, max_state_age_ms,
seed, chunking, rtc_*), shared and read where used, so the dynamic ones (max_wait_ms, max_state_age_ms) apply at the
next tick. `inputs.observe()` returns (observation, JointSample, camera frames) or raises an input error; `arm` sends
commands and keeps the latest joint sample. `chunking: rtc` sends each chunk request with the plan left as a
real-time-chunking prefix (broker.py).

Threads. The node's ROS executor delivers messages into the drivers and calls the operator entry points; the tick
thread owns the tick; the inference thread runs the policy. One observation's path is steps 1-5:

  ROS executor thread(s)          │ tick thread (this module)                │ inference thread (inference.py)
  ────────────────────────────────┼──────────────────────────────────────────┼────────────────────────────────
  /joint_states -> arm driver ────┼─► wake(): tick_source joint_states       │
  camera msgs -> camera drivers   │   (or the timer: every 1/control_hz)     │
                                  │ 1 observe  inputs.observe()  (inputs.py) │
                                  │ 2 broker   action of this tick; a chunk  │
                                  │            request when due (broker.py) ─┼─► policy.infer(obs)
                                  │ 3 safety   safety.step(...)  (safety_    │          │
                                  │            hook.py -> safety/)           │   _on_chunk: broker.put ◄┘
                                  │ 4 command  arm.send(...)  under the      │   ChunkRecord -> taps
                                  │            safety lock, with step 3      │
                                  │ 5 taps     TickRecord -> recorder        │
  ~/start ~/stop -> start_policy, │                                          │
  stop_policy; ~/estop, /estop -> │ estop(): hold sent at once, under the same lock as steps 3-4
  estop()                         │
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import numpy as np

from pirl_robot.deploy.broker import ActionChunkBroker
from pirl_robot.deploy.inference import InferenceResult, InferenceWorker
from pirl_robot.deploy.robot import StaleInputError
from pirl_robot.deploy.stats import Rolling
from pirl_robot.deploy.taps import ChunkRecord, SafetyRecord, Tap, TickRecord
from pirl_robot.drivers.arms.base import ArmError, JointSample
from pirl_robot.drivers.cameras.base import CameraError
from pirl_robot.safety.filter import IN_MOTION

INPUT_ERRORS = (StaleInputError, ArmError, CameraError)
TIMED = ("jitter", "overhead", "overhead_cpu", "state_to_command", "inference")
COUNTED = ("ticks", "chunks", "stale", "stale_executing", "underruns")


class ThrottledLog:
    """log(level, msg) at most once a second per message key (a stuck input must not flood the log)."""

    def __init__(self, log: Callable[[str, str], None], period_s: float = 1.0):
        self.log, self.period_s = log, period_s
        self._last: dict[str, float] = {}

    def __call__(self, level: str, key: str, msg: str) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -1e9) >= self.period_s:
            self._last[key] = now
            self.log(level, msg)


class ControlLoop:
    def __init__(self, inputs, arm, safety, broker: ActionChunkBroker, policy, settings: dict[str, Any],
                 log: Callable[[str, str], None], publish_events: Callable[[list[dict]], None] = lambda e: None,
                 taps: list[Tap] | None = None):
        self.inputs, self.arm, self.safety, self.broker, self.settings = inputs, arm, safety, broker, settings
        self.log, self.log_throttled = log, ThrottledLog(log)
        self.publish_events = publish_events
        self.taps: list[Tap] = [] if taps is None else taps
        self.worker = InferenceWorker(policy, self._on_chunk, settings["seed"])
        self.tick = 0
        self.episode = 0
        self.executing = False
        self.mode = ""  # the safety stage's mode after the last tick
        self._policy_error: str | None = None
        self._cond = threading.Condition()  # guards the broker, the request in flight and `executing`
        self._wake = threading.Event()
        self._tick_lock = threading.RLock()  # held through each tick: stop_policy waits out the one in progress
        self._running = False
        self._thread: threading.Thread | None = None
        self.reset_stats()

    # --- the tick thread ----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._run, name="control-loop", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop ticking and wait for the tick in progress (before the ROS context it publishes on goes)."""
        self._running = False
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._running

    def close(self) -> None:
        self.stop_policy()
        self.stop()
        self.worker.close()

    def wake(self, sample: JointSample | None = None) -> None:
        """A joint state arrived (arm listener): tick now when ticking on joint states."""
        if self.settings["tick_source"] == "joint_states":
            self._wake.set()

    def _run(self) -> None:
        period = 1.0 / self.settings["control_hz"]
        next_t = time.monotonic() + period
        while self._running:
            if self.settings["tick_source"] == "timer":
                delay = next_t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                now = time.monotonic()
                self.stats["jitter"].add(now - next_t)
                next_t = max(next_t + period, now - period)  # after a long stall, do not burst to catch up
            else:
                self._wake.wait(timeout=max(period * 3, self.settings["max_state_age_ms"] / 1e3))
                self._wake.clear()
            if not self._running:
                break
            try:
                with self._tick_lock:
                    self.step()
            except Exception as e:  # never let the loop die silently: log and keep holding
                self.log_throttled("error", "tick", f"control tick failed: {type(e).__name__}: {e}")

    # --- one tick -------------------------------------------------------------------------------------------------
    def step(self) -> None:
        """One tick: observe -> broker -> safety -> command, then the taps."""
        t0, cpu0 = time.monotonic(), time.thread_time()  # CPU time: the tick's own work, without preemption
        tick, self.tick = self.tick, self.tick + 1
        executing = self.executing
        fault: Exception | None = None
        obs = fresh = None
        try:  # 1 observe
            obs, fresh, frames = self.inputs.observe()
            self.safety.observed(fresh, frames)
        except INPUT_ERRORS as e:
            fault = e
            self.stats["stale"] += 1
            self.stats["stale_executing"] += executing
            if executing:
                self.log_throttled("warning", "stale", f"holding: {e}")
        action, waited = None, 0.0
        if executing and fault is None:  # 2 broker
            action, waited, fault = self._next_action(tick, obs)
        # stale, but the filter brakes better knowing where the arm was
        measured = fresh if fresh is not None else self.arm.latest()
        dt = None if self._last_tick_time is None else t0 - self._last_tick_time
        with self.safety.lock:  # 3 + 4 as one: an e-stop never lands between them (docs/safety.md)
            outcome = self.safety.step(action, measured, fault, dt)  # THE safety hook: see safety_hook.py
            if outcome.mode == "stopped" and not self.executing:
                outcome.command = None  # at rest after a stop: the arm's controller holds its last target
            if outcome.command is not None:
                try:
                    self.arm.send(outcome.command)
                except ArmError as e:
                    self.safety.driver(False, str(e))
                    self.log_throttled("error", "send", f"command refused by the arm driver: {e}")
        self._submit_early_request()
        if outcome.events:
            self._emit_events(outcome.events)
        self._last_tick_time = t0
        done = time.monotonic()
        overhead = done - t0 - waited
        self.stats["overhead"].add(overhead)
        self.stats["overhead_cpu"].add(time.thread_time() - cpu0)
        if fresh is not None:
            self.stats["state_to_command"].add(done - fresh.stamp - waited)
        self.stats["ticks"] += 1
        self.mode = outcome.mode
        if self.taps:  # 5
            rec = TickRecord(tick, self.episode, t0, self.executing, outcome.mode, obs, fresh, action, outcome.command,
                             outcome.events, None if fault is None else str(fault), overhead, waited)
            for tap in self.taps:
                tap(rec)

    def _next_action(self, tick: int, obs: dict) -> tuple[np.ndarray | None, float, Exception | None]:
        waited = 0.0
        with self._cond:
            if self._policy_error is not None:
                return None, 0.0, RuntimeError(f"policy failed: {self._policy_error}")
            action = self.broker.action(tick)
            if self.broker.needs_inference(tick):
                request = self.broker.mark_requested(tick)
                request.prefix = self._rtc_prefix(tick)
                self.safety.policy("started")
                if action is not None:
                    # Requested early (lead_ticks): submitted once this tick's command is out, so the forward pass
                    # does not compete with the rest of the tick for the GIL.
                    request.obs = obs
                else:
                    request.worker_id = self.worker.submit(obs, tick, request.prefix)
            max_wait = self.settings["max_wait_ms"] / 1e3
            if action is None and self.broker.pending and max_wait > 0:
                t = time.monotonic()
                self._cond.wait_for(lambda: not self.broker.pending or not self.executing, max_wait)
                waited = time.monotonic() - t
                action = self.broker.action(tick) if self.executing else None
        if action is None and self.broker.chunks:
            self.stats["underruns"] += 1  # had a plan, ran out of it: the arm holds this tick
        return action, waited, None

    def _rtc_prefix(self, tick: int):
        """chunking: rtc -> the plan the next chunk must continue (broker.rtc_prefix), else None. The inference
        delay is rtc_inference_delay ticks, or (0) the measured median inference time in ticks, at least 1."""
        s = self.settings
        if s["chunking"] != "rtc":
            return None
        delay = s["rtc_inference_delay"]
        if delay == 0:
            p50 = self.stats["inference"].percentile(50)
            delay = 1 if np.isnan(p50) else max(1, int(np.ceil(p50 * s["control_hz"])))
        return self.broker.rtc_prefix(tick, delay, s["rtc_execution_horizon"])

    def _submit_early_request(self) -> None:
        with self._cond:
            request = self.broker.request
            if request is not None and request.obs is not None and self.executing:
                request.worker_id = self.worker.submit(request.obs, request.obs_tick, request.prefix)
                request.obs = None

    def _on_chunk(self, result: InferenceResult) -> None:
        """On the inference thread: the chunk (or error) answering the request in flight."""
        with self._cond:
            request = self.broker.request
            if not self.executing or request is None or request.worker_id != result.request_id:
                return  # answers a request of an episode that was stopped meanwhile
            self.stats["inference"].add(result.latency_s)
            self.safety.policy("finished" if result.error is None else "failed", result.error or "")
            if result.error is not None:
                self._policy_error = result.error.splitlines()[0]
                self.broker.cancel_request()
                self.log("error", f"policy inference failed: {result.error}")
            else:
                self.broker.put(result.actions, result.obs_tick, self.tick)
                self.stats["chunks"] += 1
            episode = self.episode
            self._cond.notify_all()
        rec = ChunkRecord(result.obs_tick, episode, result.actions, result.noise, result.latency_s, result.error,
                          result.prefix)
        for tap in self.taps:
            tap(rec)

    def policy_lost(self, reason: str) -> None:
        """The policy's link is gone (a served policy's connection closed, serve/client.py): a policy fault from
        the next tick on, as if the call in flight had failed; the operator's start retries (and reconnects)."""
        with self._cond:
            if not self.executing or self._policy_error is not None:
                return
            self._policy_error = reason
            self.broker.cancel_request()
            self.safety.policy("failed", reason)
            self._cond.notify_all()
        self.log("error", reason)

    def _emit_events(self, events: list[dict]) -> None:
        self.publish_events(events)
        rec = SafetyRecord(self.episode, events)
        for tap in self.taps:
            tap(rec)

    # --- operator -------------------------------------------------------------------------------------------------
    def start_policy(self) -> str:
        if not self._running:
            raise RuntimeError("the node is not active (configure and activate it first)")
        ok, why = self.safety.resume()
        if not ok:
            raise RuntimeError(why)
        with self._cond:
            self.broker.reset()
            self.episode += 1
            if self.settings["seed"] >= 0:
                self.worker.reseed(self.settings["seed"] + self.episode)
            self._policy_error = None
            self.executing = True
        return f"executing episode {self.episode}"

    def stop_policy(self, wait_s: float = 0.0) -> str:
        """Stop executing; the filter brakes within limits on the next ticks. wait_s: return once at rest.

        Returns after the tick in progress (if any) is done, so no command of the policy's is sent after it:
        from here on only the filter's braking commands go out (none once at rest)."""
        with self._cond:
            was, self.executing = self.executing, False
            self.broker.reset()
            self.safety.stop()
            self._cond.notify_all()
        with self._tick_lock:  # a tick that read `executing` before the stop finishes (and sends) first
            pass
        deadline = time.monotonic() + wait_s
        while self._running and self.mode in IN_MOTION and time.monotonic() < deadline:
            time.sleep(0.005)
        return ("stopped" if was else "was not executing") + f" (safety mode {self.mode or 'n/a'})"

    def estop(self, detail: str = "") -> str:
        """Latch the e-stop: stop executing and send the hold at once (not waiting for the next tick)."""
        self.stop_policy()
        with self.safety.lock:  # no command of a tick computed before the e-stop goes out after its hold
            hold = self.safety.estop(self.arm.latest())
            if hold is not None:
                try:
                    self.arm.send(hold)
                except ArmError as e:
                    self.log("error", f"e-stop hold refused by the arm driver: {e}")
            events = self.safety.drain_events()
        self._emit_events(events)
        self.log("warning", f"E-STOP latched {detail}".strip())
        return "e-stop latched"

    # --- diagnostics ----------------------------------------------------------------------------------------------
    def reset_stats(self) -> None:
        self.stats: dict[str, Any] = {**{k: Rolling() for k in TIMED}, **{k: 0 for k in COUNTED}}
        self._last_tick_time: float | None = None

    def diagnostics(self) -> dict[str, Any]:
        s = self.stats
        d = {"executing": self.executing, "episode": self.episode, "ticks": s["ticks"], "stale_inputs": s["stale"],
             "stale_inputs_executing": s["stale_executing"], "safety": self.safety.name, "safety_mode": self.mode,
             "chunks": s["chunks"], "underruns": s["underruns"]}
        for k in TIMED:
            for q, v in s[k].summary().items():
                d[f"{k}_{q}" + ("_ms" if q != "n" else "")] = v
        return d
