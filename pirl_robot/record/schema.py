"""What a recorded episode holds, and where: per-tick data as LeRobotDataset features, the rest in sidecars.

Dataset features (one row per control tick that had an observation, while executing and during the stop):

    observation.state              (S,)   the policy's state vector, as fed to the policy
    observation.images.<cam>       (H, W, 3) the camera frame as fed to the policy (PNG: lossless, exact replay;
                                          video: smaller, lossy)
    observation.joints.position    (J,)   the arm's measured joint state (driver units)
    observation.joints.velocity    (J,)   (zeros when the driver has none)
    action                         (A,)   the raw policy action of this tick (chunk broker output, policy units)
    action.valid                   bool   False: no policy action this tick (waiting for a chunk, stopping)
    command.applied                (C,)   the command sent to the arm after the safety filter (command units)
    command.sent                   bool   False: nothing was sent this tick
    policy.chunk_new               bool   a chunk was computed from THIS row's observation ...
    policy.chunk_actions           (H, A) ... its actions (policy units) ...
    policy.chunk_noise             (H, N) ... the initial noise (N: the model's chain width, pi0's padded dims) it was sampled from (exact offline re-run) ...
    policy.rtc_prefix              (H, A) ... real-time chunking: the committed actions it was guided to
                                          continue (zeros after P) ...
    policy.rtc                     (3,)   ... [P, inference delay, execution horizon] of that guidance (P = 0: none) ...
    policy.latency_ms              1      ... and its inference time
    policy.executing               bool   False on the rows of the controlled stop after ~/stop
    timing.tick                    int64  the node's control tick
    timing.t_s                     float64 seconds since the episode's first row (monotonic clock)
    timing.state_age_ms            1      age of the joint state the tick used
    timing.tick_overhead_ms        1      node time from the tick's start to the command, without chunk waits
    timing.wait_ms                 1      time the tick waited for a chunk in flight

Sidecars (variable-length or not per tick) in the dataset's meta/ folder:
    meta/pirl_episode.json   bundle id + hash, spec, task, operator, outcome, node parameters, counts, times
    meta/pirl_events.jsonl   safety events, input faults, policy errors, outcome entries (time + tick each)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

IMAGE_PREFIX = "observation.images."
FORMAT = "pirl-episode/1"


@dataclass(frozen=True)
class RecordSchema:
    state_names: tuple[str, ...]
    action_names: tuple[str, ...]
    command_names: tuple[str, ...]
    joint_names: tuple[str, ...]
    cameras: tuple[tuple[str, int, int], ...]  # (name, height, width) as fed to the policy
    chunk_size: int
    command_scale: tuple[float, ...] = ()  # command = action * scale + offset (for plots in policy units)
    command_offset: tuple[float, ...] = ()
    action_state_index: tuple[int, ...] = ()
    fps: float = 20.0
    extra: dict = field(default_factory=dict)
    noise_dim: int = 0  # width of the recorded chunk noise: the model's chain space (pi0: padded); 0 = action_dim

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    @property
    def noise_width(self) -> int:
        return self.noise_dim or self.action_dim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RecordSchema":
        d = dict(d)
        for k in ("state_names", "action_names", "command_names", "joint_names", "command_scale", "command_offset",
                  "action_state_index"):
            d[k] = tuple(d.get(k) or ())
        d["cameras"] = tuple((str(c[0]), int(c[1]), int(c[2])) for c in d.get("cameras") or ())
        return cls(**d)

    def command_to_action(self, command: np.ndarray) -> np.ndarray:
        """Applied commands (command units) back in policy action units, so both plot on one axis."""
        c = np.asarray(command, dtype=np.float64)
        scale = np.asarray(self.command_scale or [1.0] * c.shape[-1])
        offset = np.asarray(self.command_offset or [0.0] * c.shape[-1])
        return (c - offset) / np.where(scale == 0, 1.0, scale)

    def measured_actions(self, state: np.ndarray) -> dict[str, float]:
        """The state entry each action entry commands (by action name): 'measured' in the policy's own units."""
        out = {}
        for name, i in zip(self.action_names, self.action_state_index or [-1] * self.action_dim):
            if 0 <= i < len(state):
                out[name] = float(state[i])
        return out


def features(schema: RecordSchema, video: bool = False) -> dict[str, dict]:
    """lerobot feature spec of a recorded episode (see the module docstring)."""
    h, a = schema.chunk_size, schema.action_dim
    scalar = {"shape": (1,), "names": None}
    feats: dict[str, dict] = {
        "observation.state": {"dtype": "float32", "shape": (len(schema.state_names),),
                              "names": list(schema.state_names)},
        "observation.joints.position": {"dtype": "float32", "shape": (len(schema.joint_names),),
                                        "names": list(schema.joint_names)},
        "observation.joints.velocity": {"dtype": "float32", "shape": (len(schema.joint_names),),
                                        "names": list(schema.joint_names)},
        "action": {"dtype": "float32", "shape": (a,), "names": list(schema.action_names)},
        "action.valid": {"dtype": "bool", **scalar},
        "command.applied": {"dtype": "float32", "shape": (len(schema.command_names),),
                            "names": list(schema.command_names)},
        "command.sent": {"dtype": "bool", **scalar},
        "policy.chunk_new": {"dtype": "bool", **scalar},
        "policy.chunk_actions": {"dtype": "float32", "shape": (h, a), "names": None},
        "policy.chunk_noise": {"dtype": "float32", "shape": (h, schema.noise_width), "names": None},
        "policy.rtc_prefix": {"dtype": "float32", "shape": (h, a), "names": None},
        "policy.rtc": {"dtype": "int32", "shape": (3,), "names": ["prefix_len", "inference_delay",
                                                                 "execution_horizon"]},
        "policy.latency_ms": {"dtype": "float32", **scalar},
        "policy.executing": {"dtype": "bool", **scalar},
        "timing.tick": {"dtype": "int64", **scalar},
        "timing.t_s": {"dtype": "float64", **scalar},
        "timing.state_age_ms": {"dtype": "float32", **scalar},
        "timing.tick_overhead_ms": {"dtype": "float32", **scalar},
        "timing.wait_ms": {"dtype": "float32", **scalar},
    }
    for name, height, width in schema.cameras:
        feats[IMAGE_PREFIX + name] = {"dtype": "video" if video else "image", "shape": (height, width, 3),
                                      "names": ["height", "width", "channels"]}
    return feats


def rtc_prefix(chunk: dict | None, h: int, a: int) -> np.ndarray:
    """A journal chunk's real-time-chunking prefix as an (h, a) block, zero-padded after its P rows."""
    out = np.zeros((h, a), np.float32)
    if chunk is not None and chunk.get("rtc_prefix") is not None:
        p = np.asarray(chunk["rtc_prefix"], np.float32).reshape(-1, a)
        out[: len(p)] = p
    return out


def vec(x, n: int, dtype=np.float32) -> np.ndarray:
    """x as a length-n vector, zeros when absent (the row's validity flag says which)."""
    if x is None:
        return np.zeros(n, dtype=dtype)
    v = np.asarray(x, dtype=dtype).reshape(-1)
    if v.shape != (n,):
        raise ValueError(f"expected {n} entries, got {v.shape}")
    return v
