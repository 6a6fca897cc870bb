"""One Rerun layout for every run of a policy: live on the robot, saved per episode, in sim evaluation, in replay.

Entities (policy units throughout, so a joint's lines share one axis; applied commands are mapped back):

    camera/<cam>                 Image: the frame fed to the policy
    joints/<action>/measured     Scalars: the state entry the action commands (the arm's position)
    joints/<action>/policy       Scalars: the raw policy action executed this tick
    joints/<action>/applied      Scalars: what the safety filter let through (and what was sent)
    plan                         LineStrips2D: the latest action chunk, one strip per action entry
                                 (x = ticks ahead; y = -value, as 2D views point y down)
    latency/<name>_ms            Scalars: policy inference, tick overhead, state age, chunk wait
    safety/events                TextLog: safety events, input faults, policy errors, outcome
    episode/info                 TextDocument: task, bundle, operator, outcome
    sim/reward                   Scalars (simulation only)

Timelines: `tick` (control ticks) and `time` (seconds since the episode started).

    log = EpisodeLogger.open(schema, path="episode.rrd", live="")   # live: '', 'connect', 'serve', a URL
    log.frame(tick, t_s, state=..., images=..., raw=..., applied=..., latencies={...})
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pirl_robot.record.schema import RecordSchema

APP_ID = "pirl_robot"
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
LINE_STYLE = {"measured": (120, 120, 120), "policy": (31, 119, 180), "applied": (214, 39, 40)}
LATENCIES = ("policy_ms", "tick_overhead_ms", "state_age_ms", "chunk_wait_ms")
EVENT_LEVEL = {"estop": "ERROR", "fault": "ERROR", "policy_error": "ERROR", "bad_command": "ERROR",
               "outcome": "INFO", "start": "INFO", "start_done": "INFO", "stopped": "INFO", "operator_stop": "INFO",
               "estop_reset": "INFO"}


def entity_name(name: str) -> str:
    """A joint/camera name as one entity path part."""
    return re.sub(r"[^A-Za-z0-9_\-]", "_", name)


def live_sink(live: str):
    """'' none; 'connect': a viewer on this machine (rerun+http://127.0.0.1:9876/proxy); 'serve': host a gRPC
    server a viewer connects to; 'rerun+http://HOST:PORT/proxy': a viewer elsewhere; a path ending in .rrd:
    a file (a headless robot computer)."""
    import rerun as rr

    if not live:
        return None
    if live == "connect":
        return rr.GrpcSink()
    if live == "serve":
        return rr.GrpcServerSink()
    if live.startswith(("rerun://", "rerun+http://", "rerun+https://")):
        return rr.GrpcSink(live)
    if live.endswith(".rrd"):
        Path(live).parent.mkdir(parents=True, exist_ok=True)
        return rr.FileSink(live)
    raise ValueError(f"rerun target {live!r}: expected '', 'connect', 'serve', a rerun+http:// URL or a .rrd path")


def blueprint(schema: RecordSchema):
    import rerun.blueprint as rrb

    left = [rrb.Spatial2DView(origin=f"camera/{entity_name(c)}", name=c) for c, _, _ in schema.cameras]
    left += [rrb.Spatial2DView(origin="plan", name="planned chunk (x: ticks ahead, up: larger)"),
             rrb.TextDocumentView(origin="episode/info", name="episode")]
    joints = [rrb.TimeSeriesView(origin=f"joints/{entity_name(n)}", name=n) for n in schema.action_names]
    right = [rrb.TimeSeriesView(origin="latency", name="latency (ms)"),
             rrb.TimeSeriesView(origin="sim", name="reward"),
             rrb.TextLogView(origin="safety", name="safety events")]
    return rrb.Blueprint(rrb.Horizontal(rrb.Vertical(*left), rrb.Grid(*joints, name="joints (policy units)"),
                                        rrb.Vertical(*right), column_shares=[1.2, 2.5, 1.3]),
                         rrb.TimePanel(state="expanded"), collapse_panels=False)


class EpisodeLogger:
    def __init__(self, rec, schema: RecordSchema):
        self.rec, self.schema = rec, schema
        self._names = [entity_name(n) for n in schema.action_names]
        self._styled = False

    @classmethod
    def open(cls, schema: RecordSchema, path: str | Path | None = None, live: str = "",
             recording_id: str | None = None) -> "EpisodeLogger":
        import rerun as rr

        rec = rr.RecordingStream(APP_ID, recording_id=recording_id)
        sinks = []
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            sinks.append(rr.FileSink(str(path)))
        sink = live_sink(live)
        if sink is not None:
            sinks.append(sink)
        if not sinks:
            raise ValueError("an EpisodeLogger needs a file path or a live target")
        rec.set_sinks(*sinks)
        rec.send_blueprint(blueprint(schema))
        log = cls(rec, schema)
        log.style()
        return log

    def style(self) -> None:
        import rerun as rr

        for n in self._names:
            for what, color in LINE_STYLE.items():
                self.rec.log(f"joints/{n}/{what}", rr.SeriesLines(colors=[color], names=[what]), static=True)
        for i, name in enumerate(LATENCIES):
            self.rec.log(f"latency/{name}", rr.SeriesLines(colors=[PALETTE[i]], names=[name]), static=True)

    def _at(self, tick: int, t_s: float) -> None:
        self.rec.set_time("tick", sequence=int(tick))
        self.rec.set_time("time", duration=float(t_s))

    def info(self, markdown: str) -> None:
        import rerun as rr

        self.rec.log("episode/info", rr.TextDocument(markdown, media_type=rr.MediaType.MARKDOWN), static=True)

    def frame(self, tick: int, t_s: float, state=None, images: dict | None = None, raw=None, applied=None,
              latencies: dict[str, float] | None = None) -> None:
        """One control tick. applied is in command units (mapped back to policy units here)."""
        import rerun as rr

        self._at(tick, t_s)
        for cam, img in (images or {}).items():
            self.rec.log(f"camera/{entity_name(cam)}", rr.Image(img))
        if state is not None:
            for name, v in self.schema.measured_actions(np.asarray(state)).items():
                self.rec.log(f"joints/{entity_name(name)}/measured", rr.Scalars(v))
        if raw is not None:
            for n, v in zip(self._names, np.asarray(raw, dtype=np.float64)):
                self.rec.log(f"joints/{n}/policy", rr.Scalars(v))
        if applied is not None:
            for n, v in zip(self._names, self.schema.command_to_action(applied)):
                self.rec.log(f"joints/{n}/applied", rr.Scalars(v))
        for name, v in (latencies or {}).items():
            if v is not None and np.isfinite(v):
                self.rec.log(f"latency/{name}", rr.Scalars(float(v)))

    def chunk(self, tick: int, t_s: float, actions: np.ndarray, latency_ms: float | None = None) -> None:
        import rerun as rr

        self._at(tick, t_s)
        a = np.asarray(actions, dtype=np.float64)
        x = np.arange(len(a), dtype=np.float64)
        strips = [np.stack([x, -a[:, j]], axis=1) for j in range(a.shape[1])]
        self.rec.log("plan", rr.LineStrips2D(strips, colors=[PALETTE[j % len(PALETTE)] for j in range(a.shape[1])],
                                             labels=list(self.schema.action_names), radii=0.02))
        if latency_ms is not None:
            self.rec.log("latency/policy_ms", rr.Scalars(float(latency_ms)))

    def event(self, tick: int, t_s: float, cause: str, text: str, level: str | None = None) -> None:
        import rerun as rr

        self._at(tick, t_s)
        lvl = level or EVENT_LEVEL.get(cause, "WARN")
        self.rec.log("safety/events", rr.TextLog(f"{cause}: {text}" if text else cause, level=lvl))

    def scalar(self, tick: int, t_s: float, entity: str, value: float) -> None:
        import rerun as rr

        self._at(tick, t_s)
        self.rec.log(entity, rr.Scalars(float(value)))

    def close(self) -> None:
        self.rec.flush()
        self.rec.disconnect()


def episode_markdown(meta: dict, outcome: dict | None = None) -> str:
    out = outcome or meta.get("outcome") or {}
    b = meta.get("bundle") or {}
    lines = [f"**{meta.get('task') or '(no instruction)'}**", "",
             f"- outcome: **{out.get('result', 'unknown')}** ({out.get('source', '')})",
             f"- bundle: `{b.get('id', '')}` sha256 `{str(b.get('content_sha256', ''))[:12]}`",
             f"- operator: {meta.get('operator') or '-'}", f"- session: {meta.get('session', '')}, "
             f"episode {meta.get('episode', '')}", f"- frames: {meta.get('frames', '')}, "
             f"chunks: {meta.get('chunks', '')}"]
    if meta.get("interrupted"):
        lines.append("- **interrupted** (recovered after a crash)")
    return "\n".join(lines)


def log_recorded_episode(episode, path: str | Path | None = None, live: str = "") -> Path | None:
    """A committed episode (record.episodes.RecordedEpisode) as a Rerun recording: the same entities as live."""
    schema = episode.schema
    log = EpisodeLogger.open(schema, path=path, live=live,
                             recording_id=f"{episode.meta['session']}-{episode.meta['episode']}")
    try:
        c = episode.columns()
        images = {cam: episode.images(cam) for cam, _, _ in schema.cameras}
        log.info(episode_markdown(episode.meta, episode.outcome))
        for i in range(len(c["timing.tick"])):
            tick, t = int(c["timing.tick"][i]), float(c["timing.t_s"][i])
            if c["policy.chunk_new"][i]:
                log.chunk(tick, t, c["policy.chunk_actions"][i], float(c["policy.latency_ms"][i]))
            log.frame(tick, t, state=c["observation.state"][i], images={k: v[i] for k, v in images.items()},
                      raw=c["action"][i] if c["action.valid"][i] else None,
                      applied=c["command.applied"][i] if c["command.sent"][i] else None,
                      latencies={"tick_overhead_ms": c["timing.tick_overhead_ms"][i],
                                 "state_age_ms": c["timing.state_age_ms"][i],
                                 "chunk_wait_ms": c["timing.wait_ms"][i]})
        for e in episode.events:
            log.event(int(e.get("tick", 0)), float(e.get("t_s", 0.0)), e.get("cause") or e.get("kind", ""),
                      event_text(e))
    finally:
        log.close()
    return Path(path) if path is not None else None


def event_text(e: dict) -> str:
    kind = e.get("kind", "")
    if kind == "outcome":
        return f"{e.get('result')} ({e.get('source')})"
    parts = [str(e.get("detail") or "")]
    if e.get("mode"):
        parts.append(f"[mode {e['mode']}]")
    return " ".join(p for p in parts if p)
