"""Offline re-run: feed a recorded episode's observations to a bundle and compare its chunks with the recorded ones.

With the bundle that ran the episode and the recorded noise, the chunks come out bit for bit the same (camera
frames are stored losslessly unless the recording used video). With a newer bundle the per-joint divergence says
how differently it would have acted in exactly the situations the robot met.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pirl_robot.record.episodes import RecordedEpisode
from pirl_robot.spec import PolicySpec


@dataclass
class OfflineRerun:
    episode: str
    bundle: str
    noise: str                 # "recorded" or "seed N"
    action_names: tuple[str, ...]
    ticks: np.ndarray          # (K,) observation tick of each chunk
    recorded: np.ndarray       # (K, H, A) recorded chunks (policy units)
    rerun: np.ndarray          # (K, H, A) the bundle's chunks on the same observations
    exec_horizon: int

    @property
    def diff(self) -> np.ndarray:
        return self.rerun - self.recorded

    @property
    def identical(self) -> bool:
        return bool(np.array_equal(self.recorded, self.rerun))

    def table(self) -> list[dict]:
        """Per action entry: max / mean |diff| over every chunk entry, RMS, and over the executed actions only."""
        d = np.abs(self.diff)
        ex = d[:, : self.exec_horizon]
        return [{"joint": n, "max_abs": float(d[..., j].max()), "mean_abs": float(d[..., j].mean()),
                 "rms": float(np.sqrt((self.diff[..., j] ** 2).mean())), "executed_max_abs": float(ex[..., j].max()),
                 "executed_mean_abs": float(ex[..., j].mean())} for j, n in enumerate(self.action_names)]

    def markdown(self) -> str:
        lines = [f"offline re-run of {self.episode} with {self.bundle} (noise: {self.noise}): {len(self.ticks)} "
                 f"chunks, {'IDENTICAL to the recording' if self.identical else 'diverges'}", "",
                 "| action | max abs | mean abs | RMS | executed max abs | executed mean abs |",
                 "|---|---|---|---|---|---|"]
        for r in self.table():
            lines.append(f"| {r['joint']} | {r['max_abs']:.3g} | {r['mean_abs']:.3g} | {r['rms']:.3g} | "
                         f"{r['executed_max_abs']:.3g} | {r['executed_mean_abs']:.3g} |")
        return "\n".join(lines)


def check_fits(policy_spec: PolicySpec, recorded_spec: dict | None) -> None:
    """The bundle must read the same observation and produce the same actions as the recorded one."""
    if recorded_spec is None:
        return
    rec = PolicySpec.from_dict(recorded_spec)
    policy_spec.check_compatible(rec, what="recorded episode")


def rerun_episode(episode: RecordedEpisode, policy, bundle_name: str = "", noise_seed: int | None = None,
                  exec_horizon: int | None = None) -> OfflineRerun:
    """Every recorded chunk recomputed by `policy` from the observation it was computed from.

    noise_seed None: the recorded noise (exact replay); an int: fresh noise from that seed (also what happens
    when the bundle's chunk shape differs from the recorded one). A chunk recorded under real-time chunking is
    re-run with the prefix it was guided by (policy.rtc columns)."""
    check_fits(policy.spec, episode.meta.get("spec"))
    c = episode.columns()
    rows = np.flatnonzero(c["policy.chunk_new"])
    if len(rows) == 0:
        raise ValueError(f"{episode.root} holds no policy chunk")
    cams = [cam for cam, _, _ in episode.schema.cameras]
    images = {cam: episode.images(cam) for cam in cams}
    spec = policy.spec
    shape = tuple(policy.noise_shape)
    same_shape = c["policy.chunk_noise"].shape[1:] == shape
    rng = np.random.default_rng(noise_seed if noise_seed is not None else 0)
    use_recorded = noise_seed is None and same_shape
    prefixes = {ch["row"]: ch["prefix"] for ch in episode.chunks()}  # real-time chunking's guidance, if any
    out = []
    for r in rows:
        obs = {"state": c["observation.state"][r], "images": {cam: images[cam][r] for cam in cams},
               "instruction": episode.task}
        noise = c["policy.chunk_noise"][r] if use_recorded else rng.standard_normal(shape).astype(np.float32)
        extra = {} if prefixes[int(r)] is None else {"prefix": prefixes[int(r)]}
        out.append(policy.infer(obs, noise=noise, **extra)["actions"].astype(np.float32))
    rerun = np.stack(out)
    recorded = c["policy.chunk_actions"][rows]
    h = min(rerun.shape[1], recorded.shape[1])
    horizon = exec_horizon or episode.meta.get("params", {}).get("exec_horizon") or spec.exec_horizon
    return OfflineRerun(episode.name, bundle_name, "recorded" if use_recorded else f"seed {noise_seed or 0}",
                        tuple(spec.action_names), c["timing.tick"][rows], recorded[:, :h], rerun[:, :h],
                        min(int(horizon), h))


def save_report(res: OfflineRerun, out: Path) -> list[Path]:
    """divergence.md / .json and two plots: executed actions over time (recorded vs re-run) and the divergence."""
    from pirl_robot.utils.plots import pyplot, save_figure

    plt = pyplot()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "divergence.md").write_text(res.markdown() + "\n")
    (out / "divergence.json").write_text(json.dumps({"episode": res.episode, "bundle": res.bundle, "noise": res.noise,
                                                     "identical": res.identical, "chunks": len(res.ticks),
                                                     "per_joint": res.table()}, indent=1))
    k, h = res.exec_horizon, res.recorded.shape[1]
    ticks = (res.ticks[:, None] + np.arange(h)[None, :])
    n = len(res.action_names)
    cols = min(4, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows), squeeze=False)
    for j, name in enumerate(res.action_names):
        ax = axes[j // cols][j % cols]
        ax.plot(ticks[:, :k].ravel(), res.recorded[:, :k, j].ravel(), ".", ms=3, label="recorded")
        ax.plot(ticks[:, :k].ravel(), res.rerun[:, :k, j].ravel(), "x", ms=3, label="re-run")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"executed actions: recorded vs {res.bundle} (x: tick)", fontsize=10)
    p1 = save_figure(fig, out / "actions.png", dpi=100)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.6))
    tab = res.table()
    x = np.arange(n)
    a1.bar(x - 0.2, [t["max_abs"] for t in tab], 0.4, label="max |diff|")
    a1.bar(x + 0.2, [t["mean_abs"] for t in tab], 0.4, label="mean |diff|")
    a1.set_xticks(x, res.action_names, rotation=45, ha="right", fontsize=8)
    a1.set_title("divergence per action entry (all chunk entries)", fontsize=10)
    a1.legend(fontsize=8)
    a2.plot(res.ticks, np.abs(res.diff).max(axis=(1, 2)), "o-", ms=3)
    a2.set(xlabel="observation tick", ylabel="max |diff| in the chunk", title="divergence over the episode")
    for a in (a1, a2):
        a.grid(alpha=0.3)
    p2 = save_figure(fig, out / "divergence.png", dpi=100)
    return [out / "divergence.md", out / "divergence.json", p1, p2]
