"""The messages of `pirl serve` (protocol 1) and their validation against the served policy's spec.

    server -> client on connect   {"type": "hello", "protocol": 1, "bundle_id", "content_sha256", "model_kind",
                                   "spec": PolicySpec.to_dict(), "noise_shape": [H, A_model], "max_message_bytes"}
    client -> server              {"type": "attach", "robot_spec": {...}}        -> {"type": "attached"} or an error
                                  {"type": "infer", "id": n, "obs": {"state": f32[S], "images": {cam: u8[H, W, 3]},
                                   "instruction": str}, "noise": f32[H, A_model]?,
                                   "prefix": {"actions": f32[P, A], "inference_delay": d, "execution_horizon": e}?}
                                                          -> {"type": "result", "id": n, "actions": f32[H, A],
                                                              "timing": {"infer_ms", "server_ms"}}
                                  {"type": "health", "id": n}                    -> {"type": "health", "id": n, ...}
    any failure                   {"type": "error", "id": n | None, "code": CODE, "message": "what and why"}

A spec mismatch on attach is answered and the connection closed (that robot must not use this policy); every other
error leaves the connection open. Observations are single (one state vector, one image per camera).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pirl_robot.flow.rtc import ChunkPrefix
from pirl_robot.spec import PolicySpec

PROTOCOL = 1
# bad_message: not msgpack / not a map; bad_request: a field missing or of the wrong type; observation: the
# observation does not fit the spec (shape, camera, NaN); spec_mismatch: attach with a robot the policy does not
# fit; unauthorized: no or a wrong token (HTTP 401 before the websocket opens); internal: the policy failed.
ERROR_CODES = ("bad_message", "bad_request", "observation", "spec_mismatch", "internal")
MAX_INSTRUCTION = 2000


class RequestError(ValueError):
    """A request the server refuses; `code` is one of ERROR_CODES."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class InferRequest:
    id: int
    obs: dict
    noise: np.ndarray | None
    prefix: ChunkPrefix | None


def error(code: str, message: str, request_id: int | None = None) -> dict:
    return {"type": "error", "id": request_id, "code": code, "message": message}


def request_id(msg: dict) -> int:
    rid = msg.get("id")
    if not isinstance(rid, int) or isinstance(rid, bool):
        raise RequestError("bad_request", f"'id' must be an integer, got {type(rid).__name__}")
    return rid


def _float_array(x: Any, what: str, shape: tuple[int, ...] | None = None, rank: int | None = None) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        raise RequestError("bad_request", f"{what} must be a float array, got {type(x).__name__}"
                           f"{'' if not isinstance(x, np.ndarray) else ' of ' + str(x.dtype)}")
    if (shape is not None and x.shape != shape) or (rank is not None and x.ndim != rank):
        raise RequestError("observation" if what.startswith("obs") else "bad_request",
                           f"{what} has shape {x.shape}, expected {shape if shape is not None else f'rank {rank}'}")
    if not np.isfinite(x).all():
        raise RequestError("observation" if what.startswith("obs") else "bad_request",
                           f"{what} contains NaN or inf ({int((~np.isfinite(x)).sum())} entries)")
    return x.astype(np.float32, copy=False)


def parse_observation(obs: Any, spec: PolicySpec) -> dict:
    if not isinstance(obs, dict):
        raise RequestError("bad_request", f"'obs' must be a map, got {type(obs).__name__}")
    unknown = set(obs) - {"state", "images", "instruction"}
    if unknown:
        raise RequestError("bad_request", f"unknown observation keys {sorted(unknown)}")
    out: dict = {}
    if spec.state_dim:
        if "state" not in obs:
            raise RequestError("observation", "observation has no 'state'")
        out["state"] = _float_array(obs["state"], "obs.state", shape=(spec.state_dim,))
    images = obs.get("images", {})
    if not isinstance(images, dict):
        raise RequestError("bad_request", "'obs.images' must be a map camera -> image")
    cams = {c.name: c for c in spec.cameras}
    for name, img in images.items():
        if name not in cams:
            raise RequestError("observation", f"camera {name!r} is not in the policy spec {sorted(cams)}")
        c = cams[name]
        if not isinstance(img, np.ndarray) or img.dtype.kind not in "uf":
            raise RequestError("bad_request", f"obs.images.{name} must be a uint8 or float array")
        if img.shape != (c.height, c.width, 3):
            raise RequestError("observation", f"obs.images.{name} has shape {img.shape}, expected "
                               f"({c.height}, {c.width}, 3)")
        if img.dtype.kind == "f":
            _float_array(img, f"obs.images.{name}")
    out["images"] = dict(images)
    if "instruction" in obs:
        text = obs["instruction"]
        if not isinstance(text, str) or len(text) > MAX_INSTRUCTION:
            raise RequestError("bad_request", f"'obs.instruction' must be a string of at most {MAX_INSTRUCTION} "
                               "characters")
        out["instruction"] = text
    return out


def parse_prefix(p: Any, spec: PolicySpec) -> ChunkPrefix:
    if not isinstance(p, dict) or set(p) != {"actions", "inference_delay", "execution_horizon"}:
        raise RequestError("bad_request", "'prefix' must be a map with actions, inference_delay, execution_horizon")
    d, e = p["inference_delay"], p["execution_horizon"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (d, e)):
        raise RequestError("bad_request", "prefix inference_delay and execution_horizon must be integers")
    prefix = ChunkPrefix(_float_array(p["actions"], "prefix.actions", rank=2), d, e)
    try:
        prefix.check(spec)
    except ValueError as err:
        raise RequestError("bad_request", f"prefix: {err}") from None
    return prefix


def parse_infer(msg: dict, spec: PolicySpec, noise_shape: tuple[int, int]) -> InferRequest:
    rid = request_id(msg)
    unknown = set(msg) - {"type", "id", "obs", "noise", "prefix"}
    if unknown:
        raise RequestError("bad_request", f"unknown infer fields {sorted(unknown)}")
    obs = parse_observation(msg.get("obs"), spec)
    noise = msg.get("noise")
    if noise is not None:
        noise = _float_array(noise, "noise", shape=tuple(noise_shape))
    prefix = msg.get("prefix")
    return InferRequest(rid, obs, noise, None if prefix is None else parse_prefix(prefix, spec))


def prefix_to_wire(prefix: ChunkPrefix) -> dict:
    return {"actions": np.asarray(prefix.actions, dtype=np.float32), "inference_delay": int(prefix.inference_delay),
            "execution_horizon": int(prefix.execution_horizon)}
