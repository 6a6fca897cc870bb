"""Demonstrations in a local LeRobotDataset v3 -> supervised (SFT) training arrays and normalisation stats.

    demos = load_demos("outputs/demos/pushcube", chunk_size=8)
    stats = compute_stats(demos, spec)                    # action stats in the model's (delta) action space
    transforms = PolicyTransforms(spec, stats["state"], stats["actions"])
    batch = transforms.inputs(demos.batch(np.arange(32)))  # state, actions (delta, normalised), images.<cam>

For frame t of an episode of length L the target chunk is a_t .. a_{t+H-1}; steps past the episode end repeat the
last action a_{L-1} and are flagged in ``is_pad`` (the flow-matching loss can mask them, as lerobot's pi0 does).
Actions are stored absolute (joint targets, as executed); the policy learns DELTA arm actions, so their stats
must be taken after the same DeltaActions transform the policy applies: use ``compute_stats``, not the stats
lerobot writes in meta/stats.json (those are of absolute actions).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pirl_robot.spec import PolicySpec
from pirl_robot.transforms import DeltaActions, Stats

IMAGE_PREFIX = "observation.images."
SIDECAR = "meta/pirl_sim.json"  # written by sim/demo_recording.py: task config, spec, expert, episodes


class DemoDataError(ValueError):
    """The directory is not a readable LeRobotDataset v3, or it does not match the policy spec."""


@dataclass
class DemoArrays:
    state: np.ndarray  # (N, S) float32
    actions: np.ndarray  # (N, H, A) float32, absolute
    is_pad: np.ndarray  # (N, H) bool
    episode_index: np.ndarray  # (N,) int64
    frame_index: np.ndarray  # (N,) int64
    state_names: tuple[str, ...]
    action_names: tuple[str, ...]
    images: dict[str, np.ndarray] = field(default_factory=dict)  # cam -> (N, H, W, 3) uint8
    tasks: list[str] = field(default_factory=list)  # instruction of each frame
    spec: PolicySpec | None = None  # recorded with the data (sim demos), if any
    fps: float = 0.0

    def __len__(self) -> int:
        return len(self.state)

    @property
    def num_episodes(self) -> int:
        return len(np.unique(self.episode_index))

    def batch(self, idx: np.ndarray | slice) -> dict[str, torch.Tensor]:
        """Raw model batch for rows idx: state, actions, is_pad, images.<cam> (uint8 HWC)."""
        out = {"state": torch.from_numpy(self.state[idx]), "actions": torch.from_numpy(self.actions[idx]),
               "is_pad": torch.from_numpy(self.is_pad[idx])}
        for cam, imgs in self.images.items():
            out[f"images.{cam}"] = torch.from_numpy(imgs[idx])
        return out


def load_demos(root: str | Path, chunk_size: int, spec: PolicySpec | None = None) -> DemoArrays:
    """Read every frame of the dataset at `root` (local only, never the hub) into chunked training arrays.

    spec: when given, the dataset's state/action names and cameras must match it (else DemoDataError).
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = Path(root)
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise DemoDataError(f"{root} is not a LeRobotDataset (no meta/info.json)")
    try:
        info = json.loads(info_path.read_text())
        features = info["features"]
        # repo_id only names the dataset here; with the files present under root nothing is downloaded.
        ds = LeRobotDataset(f"local/{root.name}", root=root, return_uint8=True)
        cols = ds.hf_dataset.with_format("numpy", columns=["observation.state", "action", "episode_index",
                                                           "frame_index", "task_index"])[:]
    except Exception as e:  # corrupt parquet/json, wrong version...: one clear message, cause attached
        raise DemoDataError(f"cannot read the LeRobotDataset at {root}: {type(e).__name__}: {e}") from e
    for key in ("observation.state", "action"):
        if key not in features:
            raise DemoDataError(f"{root} has no {key!r} feature (has {sorted(features)})")

    state = np.asarray(cols["observation.state"], dtype=np.float32)
    raw_actions = np.asarray(cols["action"], dtype=np.float32)
    episode = np.asarray(cols["episode_index"], dtype=np.int64)
    frame = np.asarray(cols["frame_index"], dtype=np.int64)
    if not (np.isfinite(state).all() and np.isfinite(raw_actions).all()):
        raise DemoDataError(f"{root} contains NaN/inf states or actions")
    actions, is_pad = chunk_actions(raw_actions, episode, frame, chunk_size)

    cams = sorted(k[len(IMAGE_PREFIX):] for k, f in features.items()
                  if k.startswith(IMAGE_PREFIX) and f["dtype"] in ("image", "video"))
    images = {cam: _read_camera(ds, features, IMAGE_PREFIX + cam) for cam in cams}
    task_of = {int(i): str(t) for t, i in zip(ds.meta.tasks.index, ds.meta.tasks["task_index"])}
    tasks = [task_of.get(i, "") for i in np.asarray(cols["task_index"]).tolist()]

    demos = DemoArrays(state=state, actions=actions, is_pad=is_pad, episode_index=episode, frame_index=frame,
                       state_names=tuple(features["observation.state"].get("names") or ()),
                       action_names=tuple(features["action"].get("names") or ()), images=images, tasks=tasks,
                       spec=_recorded_spec(root), fps=float(info.get("fps", 0.0)))
    if spec is not None:
        check_matches_spec(demos, spec)
    return demos


def chunk_actions(actions: np.ndarray, episode: np.ndarray, frame: np.ndarray,
                  chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame actions (N, A) -> chunks (N, H, A) within each episode, end-padded with the last action."""
    n = len(actions)
    order = np.lexsort((frame, episode))
    if not np.array_equal(order, np.arange(n)):
        raise DemoDataError("frames are not stored in (episode, frame) order")
    starts = np.r_[0, np.nonzero(np.diff(episode))[0] + 1]
    ends = np.r_[starts[1:], n]  # exclusive end row of each episode
    last_row = np.repeat(ends - 1, ends - starts)  # (N,) last row of the frame's episode
    want = np.arange(n)[:, None] + np.arange(chunk_size)[None, :]  # (N, H)
    is_pad = want > last_row[:, None]
    rows = np.minimum(want, last_row[:, None])
    return actions[rows], is_pad


def _read_camera(ds, features: dict, key: str) -> np.ndarray:
    if features[key]["dtype"] == "image":  # PNG frames in the parquet files: decode the whole column at once
        col = ds.hf_dataset.with_format("numpy", columns=[key])[:][key]
        imgs = np.stack([np.asarray(x) for x in col]) if col.dtype == object else np.asarray(col)
    else:  # video: lerobot decodes frame by frame (uint8 CHW with return_uint8)
        imgs = np.stack([ds[i][key].numpy().transpose(1, 2, 0) for i in range(len(ds))])
    if imgs.dtype != np.uint8 or imgs.ndim != 4 or imgs.shape[-1] != 3:
        raise DemoDataError(f"{key}: expected uint8 (N, H, W, 3) frames, got {imgs.dtype} {imgs.shape}")
    return imgs


def _recorded_spec(root: Path) -> PolicySpec | None:
    path = root / SIDECAR
    if not path.is_file():
        return None
    return PolicySpec.from_dict(json.loads(path.read_text())["spec"])


def check_matches_spec(demos: DemoArrays, spec: PolicySpec) -> None:
    problems = []
    if demos.state_names and tuple(demos.state_names) != tuple(spec.state_names):
        problems.append(f"state names {list(demos.state_names)[:4]}... != spec {list(spec.state_names)[:4]}...")
    if demos.state.shape[1] != spec.state_dim:
        problems.append(f"state has {demos.state.shape[1]} entries, spec {spec.state_dim}")
    if demos.action_names and tuple(demos.action_names) != tuple(spec.action_names):
        problems.append(f"action names {list(demos.action_names)} != spec {list(spec.action_names)}")
    if demos.actions.shape[2] != spec.action_dim:
        problems.append(f"actions have {demos.actions.shape[2]} entries, spec {spec.action_dim}")
    for cam in spec.cameras:
        if cam.name not in demos.images:
            problems.append(f"camera {cam.name!r} missing (dataset has {sorted(demos.images)})")
        elif demos.images[cam.name].shape[1:3] != (cam.height, cam.width):
            problems.append(f"camera {cam.name!r} is {demos.images[cam.name].shape[1:3]}, spec "
                            f"{(cam.height, cam.width)}")
    if problems:
        raise DemoDataError("demonstrations do not match the policy spec:\n  " + "\n  ".join(problems))


def model_actions(demos: DemoArrays, spec: PolicySpec) -> torch.Tensor:
    """Action chunks as the policy learns them: DeltaActions applied (arm joints relative to state_t)."""
    a = spec.action_dim
    mask = torch.tensor(spec.delta_action_mask or [False] * a, dtype=torch.bool)
    index = torch.tensor(spec.action_state_index or [-1] * a, dtype=torch.long)
    batch = {"state": torch.from_numpy(demos.state), "actions": torch.from_numpy(demos.actions)}
    return DeltaActions(mask, index)(batch)["actions"]


def compute_stats(demos: DemoArrays, spec: PolicySpec, state_min_std: float = 1e-3) -> dict[str, Stats]:
    """Normalisation stats for PolicyTransforms: state over all frames; actions over the non-padded chunk
    entries AFTER the delta transform (the space the model's actions live in).

    state_min_std floors each state entry's std. A handful of demos can leave an entry that varies at run time
    nearly constant (two PushCube demos with the cube at the same y): a tiny std then maps every other value
    to the normalised clip (+-10) and the policy cannot see it. A floor of the scale the state varies on at
    run time (a few cm, a few hundredths of a rad) keeps it visible."""
    check_matches_spec(demos, spec)
    if not state_min_std > 0:
        raise ValueError(f"state_min_std must be > 0, got {state_min_std}")
    acts = model_actions(demos, spec)[torch.from_numpy(~demos.is_pad)]  # (M, A) real steps only
    return {"state": Stats.of(torch.from_numpy(demos.state), min_std=state_min_std), "actions": Stats.of(acts)}
