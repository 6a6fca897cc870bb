"""A user-provided LIBERO LeRobotDataset v3 (instead of scripted-expert demos) -> SFT arrays for one setup.

Read with the same loader as recorded demos (``pirl_robot.data.demos.load_demos``); what differs between
datasets is adapted here, and everything else must match the policy spec:

- cameras: spec camera -> dataset camera (``{agentview: image, wrist: wrist_image}`` for lerobot's LIBERO ports,
  whose images are already rotated like this adapter's); frames of another size are resized (area filter);
- names: the dataset's state/action entry names must equal the spec's, unless ``match_names`` is False, in
  which case vectors of equal length are taken by position (the 8-D LIBERO state and 7-D action of openpi's
  conversions are laid out as this adapter's: eef pos, eef axis-angle, 2 finger joints; OSC deltas + gripper);
- tasks: with ``filter_tasks`` only episodes whose language is one of the configured tasks' instructions are kept
  (a dataset of a whole suite used for one task).

    pirl train env=libero_object env.dataset.root=/data/libero_object_lerobot \\
        'env.dataset.cameras={agentview: image, wrist: wrist_image}' env.dataset.match_names=false
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from pirl_robot.data.demos import DemoArrays, DemoDataError, check_matches_spec, load_demos
from pirl_robot.spec import PolicySpec


def load_user_dataset(root: str | Path, spec: PolicySpec, instructions: list[str],
                      cameras: dict[str, str] | None = None, match_names: bool = True,
                      filter_tasks: bool = True) -> DemoArrays:
    demos = load_demos(root, chunk_size=spec.chunk_size, spec=None)
    if filter_tasks and instructions and demos.tasks:
        wanted = {_norm(t) for t in instructions}
        keep_episodes = {int(e) for e, t in zip(demos.episode_index, demos.tasks) if _norm(t) in wanted}
        if not keep_episodes:
            have = sorted({t for t in demos.tasks})[:5]
            raise DemoDataError(f"{root}: no episode has the instruction(s) {sorted(wanted)} (dataset tasks: "
                                f"{have}...); set env.dataset.filter_tasks=false to use every episode")
        demos = _select_rows(demos, np.isin(demos.episode_index, sorted(keep_episodes)))
    images = {}
    for cam in spec.cameras:
        source = (cameras or {}).get(cam.name, cam.name)
        if source not in demos.images:
            raise DemoDataError(f"{root}: camera {source!r} (for the spec's {cam.name!r}) not in the dataset "
                                f"(has {sorted(demos.images)}); map it with env.dataset.cameras")
        images[cam.name] = _resize(demos.images[source], cam.height, cam.width)
    demos = replace(demos, images=images)
    if not match_names:
        for what, names, dim in (("state", spec.state_names, demos.state.shape[1]),
                                 ("action", spec.action_names, demos.actions.shape[2])):
            if dim != len(names):
                raise DemoDataError(f"{root}: {what} has {dim} entries, the spec {len(names)} ({', '.join(names)})")
        demos = replace(demos, state_names=tuple(spec.state_names), action_names=tuple(spec.action_names))
    check_matches_spec(demos, spec)
    return demos


def _norm(text: str) -> str:
    return " ".join(str(text).lower().strip().rstrip(".").split())


def _select_rows(d: DemoArrays, mask: np.ndarray) -> DemoArrays:
    return replace(d, state=d.state[mask], actions=d.actions[mask], is_pad=d.is_pad[mask],
                   episode_index=d.episode_index[mask], frame_index=d.frame_index[mask],
                   images={c: v[mask] for c, v in d.images.items()},
                   tasks=[t for t, k in zip(d.tasks, mask) if k])


def _resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    if frames.shape[1:3] == (height, width):
        return frames
    import cv2

    return np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in frames])
