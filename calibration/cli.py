"""pirl calibrate — camera intrinsics, hand-eye pose, and the sim twin check (docs/calibration.md).

    pirl calibrate board --out board.png                     # print it at 5000 px/m: 40 mm squares
    pirl calibrate capture --camera realsense: --out calib/s1                     # Enter per pose (arm + frame)
    pirl calibrate capture --camera topic:/camera/color/image_raw --out calib/s1 --joint-states-topic /joint_states
    pirl calibrate intrinsics calib/s1 --out calib/base_camera.yaml               # + .reprojection.png
    pirl calibrate handeye calib/s1 --intrinsics calib/base_camera.yaml --mount eye_to_hand \\
        --robot configs/robot/panda.yaml --out calib/base_camera.yaml
    pirl calibrate check calib/base_camera.yaml --session calib/s1 --view 003 --out calib/overlay.png
    pirl calibrate synth --mount eye_to_hand --out calib/synthetic                 # a session with known truth

capture: the deploy drivers' camera sources (realsense:<serial>, opencv:<device>, topic:<image topic>) and the
arm's sensor_msgs/JointState; --no-joints for intrinsics only. intrinsics: every image of the session, bad views
listed with the reason. handeye: the views with joint positions; end-effector poses from the robot yaml's URDF
and end-effector link (the safety filter's FK); every OpenCV method plus a reprojection refinement, compared.
check: the ManiSkill scene rendered through the calibrated camera (robot at the view's joints) over the frame.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

DEFAULT_ROBOT = "configs/robot/panda.yaml"


def _board_args(ap: argparse.ArgumentParser) -> None:
    from calibration.board import Board

    d = Board()
    g = ap.add_argument_group("board (capture, board, synth)")
    g.add_argument("--board-kind", default=d.kind, choices=("charuco", "checkerboard"))
    g.add_argument("--squares", default=f"{d.squares_x}x{d.squares_y}", help="squares along x and y (e.g. 7x5)")
    g.add_argument("--square-m", type=float, default=d.square_length, help="square side (m)")
    g.add_argument("--marker-m", type=float, default=d.marker_length, help="ArUco marker side (m, ChArUco)")
    g.add_argument("--dictionary", default=d.dictionary)


def _board(a):
    from calibration.board import Board

    sx, _, sy = a.squares.partition("x")
    return Board(a.board_kind, int(sx), int(sy), a.square_m, a.marker_m, a.dictionary)


def cmd_board(a) -> int:
    import cv2

    img = _board(a).image(a.ppm, margin_px=int(0.01 * a.ppm))
    cv2.imwrite(a.out, img)
    print(f"{a.out}: {img.shape[1]}x{img.shape[0]} px; print at {a.ppm:g} px/m ({a.ppm * 0.0254:.0f} dpi) and "
          f"measure a square: it must be {1000 * a.square_m:g} mm")
    return 0


def cmd_capture(a) -> int:
    from calibration.capture import JointStateListener, capture_session
    from calibration.poses import ArmFK
    from pirl_robot.drivers.cameras.factory import make_camera

    node = listener = None
    names = () if a.no_joints else ArmFK.from_safety_config(a.robot).joint_names
    if not a.no_joints:
        listener = JointStateListener(a.joint_states_topic, names)
    if a.camera.startswith("topic:"):
        node = listener.node if listener else JointStateListener(a.joint_states_topic, ()).node
    camera = make_camera(a.camera_name, a.camera, node=node, width=a.width, height=a.height)
    try:
        s = capture_session(Path(a.out), _board(a), camera, listener, camera_source=a.camera, poses=a.poses)
    finally:
        if listener:
            listener.close()
    print(f"{len(s.entries)} views in {s.root}")
    return 0


def cmd_intrinsics(a) -> int:
    import cv2

    from calibration.calib_file import CalibrationFile
    from calibration.capture import open_session
    from calibration.intrinsics import calibrate_intrinsics
    from calibration.overlay import reprojection_plot

    s = open_session(a.session)
    views = s.views()
    dets = [(v.name, s.board.detect(v.image)) for v in views]
    res = calibrate_intrinsics(dets, s.image_size, distortion_model=a.model, min_views=a.min_views)
    print(res.summary())
    dev = s.camera.get("device_intrinsics")
    if dev:  # RealSense factory intrinsics: a cross-check, not an input
        print(f"  device reports fx {dev['fx']:.2f} fy {dev['fy']:.2f} cx {dev['ppx']:.2f} cy {dev['ppy']:.2f} "
              f"({100 * (res.K[0, 0] / dev['fx'] - 1):+.2f}% fx)")
    name = a.camera_name or s.camera.get("name") or "camera"
    extra = {"intrinsics": {"rms_px": res.rms_px, "views_used": len(res.per_view_px),
                            "views_rejected": [{"view": n, "reason": r} for n, r in res.rejected],
                            "std_px": res.std, **({"device": dev} if dev else {})},
             "board": s.board.to_dict(), "session": str(s.root)}
    out = CalibrationFile(name, *s.image_size, res.K, res.dist, res.distortion_model, extra=extra).save(a.out)
    det = dict(dets)
    pairs = {}
    for n, T in res.board_poses.items():
        rvec, _ = cv2.Rodrigues(T[:3, :3])
        proj, _ = cv2.projectPoints(det[n].object_points, rvec, T[:3, 3], res.K, res.dist)
        pairs[n] = (det[n].image_points, proj.reshape(-1, 2))
    plot = out.with_suffix(".reprojection.png")
    reprojection_plot(pairs, res.per_view_px, s.image_size, plot)
    print(f"wrote {out} and {plot}")
    return 0


def cmd_handeye(a) -> int:
    from calibration.calib_file import load_calibration
    from calibration.capture import open_session
    from calibration.handeye import Observations, solve_hand_eye
    from calibration.intrinsics import board_pose
    from calibration.poses import ArmFK

    s = open_session(a.session)
    cal = load_calibration(a.intrinsics)
    if (cal.width, cal.height) != s.image_size:
        raise SystemExit(f"pirl calibrate: intrinsics are for {cal.width}x{cal.height}, the session's images are "
                         f"{s.image_size[0]}x{s.image_size[1]}")
    fk = ArmFK.from_safety_config(a.robot)
    if s.joint_names and tuple(s.joint_names) != fk.joint_names:
        raise SystemExit(f"pirl calibrate: session joints {list(s.joint_names)} are not the robot's "
                         f"{list(fk.joint_names)}")
    A, B, obj, img, skipped = [], [], [], [], []
    for v in s.views():
        if v.joints is None:
            continue
        det = s.board.detect(v.image)
        if det.problem:
            skipped.append(f"{v.name}: {det.problem}")
            continue
        T, err = board_pose(det, cal.K, cal.dist)
        if err > a.max_view_px:
            skipped.append(f"{v.name}: board pose reprojection {err:.2f} px > {a.max_view_px} px")
            continue
        A.append(fk.pose(v.joints)), B.append(T), obj.append(det.object_points), img.append(det.image_points)
    for line in skipped:
        print(f"  skipped {line}")
    res = solve_hand_eye(A, B, a.mount, observations=Observations(obj, img, cal.K, cal.dist))
    print(res.table())
    parent = fk.base_link if a.mount == "eye_to_hand" else fk.ee_link
    best = res.methods[res.best]
    record = {"method": res.best, "pairs": res.pairs, "skipped": skipped, "robot": a.robot,
              "methods": {n: {"translation_rms_mm": m.translation_rms_mm, "rotation_rms_deg": m.rotation_rms_deg,
                              "reprojection_px": m.reprojection_px} for n, m in res.methods.items()},
              "board_pose": {"frame": fk.ee_link if a.mount == "eye_to_hand" else fk.base_link,
                             "matrix": best.T_board.tolist()}}
    out = cal.with_pose(a.mount, parent, res.T, record).save(a.out)
    print(f"camera {cal.camera_frame} in {parent}: {np.round(res.T[:3, 3], 4).tolist()} m; wrote {out}")
    return 0


def cmd_check(a) -> int:
    import cv2

    from calibration.calib_file import load_calibration
    from calibration.capture import open_session
    from calibration.overlay import overlay, render_twin

    cal = load_calibration(a.calibration)
    joints = None
    if a.session:
        views = {v.name: v for v in open_session(a.session).views()}
        if a.view not in views:
            raise SystemExit(f"pirl calibrate: no view {a.view!r} in {a.session} (have {sorted(views)[:5]}...)")
        real, joints = views[a.view].image, views[a.view].joints
    elif a.image:
        bgr = cv2.imread(a.image)
        if bgr is None:
            raise SystemExit(f"pirl calibrate: cannot read {a.image}")
        real = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    else:
        raise SystemExit("pirl calibrate check: give --session DIR --view NAME or --image PATH")
    if a.joints:
        joints = np.array([float(x) for x in a.joints.split(",")])
    sim = render_twin(cal, a.task, joints)
    out = overlay(real, sim)
    cv2.imwrite(a.out, cv2.cvtColor(out, cv2.COLOR_RGB2BGR))
    print(f"wrote {a.out} (real | sim twin | overlay)")
    return 0


def cmd_synth(a) -> int:
    from calibration.calib_file import CalibrationFile
    from calibration.capture import Session
    from calibration.poses import ArmFK
    from calibration.synthetic import HandEyeScene, SyntheticCamera, random_board_views

    K = np.array([[610.0, 0.0, 322.5], [0.0, 608.0, 236.0], [0.0, 0.0, 1.0]])
    D = np.array([-0.12, 0.09, 0.0008, -0.0005, -0.02])
    cam, board, rng = SyntheticCamera(K, D, (640, 480)), _board(a), np.random.default_rng(a.seed)
    fk = ArmFK.from_safety_config(a.robot)
    out = Path(a.out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"pirl calibrate: {out} exists and is not empty")
    s = Session(out, board, {"name": "base_camera", "source": "synthetic", "width": 640, "height": 480},
                fk.joint_names)
    for T in random_board_views(board, a.intrinsic_views, rng):  # board held by hand: no joints
        s.add(np.repeat(cam.render(board, T, 2.0, rng)[..., None], 3, axis=2), None)
    scene = HandEyeScene.make(fk, board, a.mount, a.views, rng, camera=cam)
    for q, T in zip(scene.q, scene.T_cam_board):
        s.add(np.repeat(cam.render(board, T, 2.0, rng)[..., None], 3, axis=2), q)
    parent = fk.base_link if a.mount == "eye_to_hand" else fk.ee_link
    CalibrationFile("base_camera", 640, 480, K, D).with_pose(a.mount, parent, scene.T_camera).save(out / "truth.yaml")
    print(f"{len(s.entries)} synthetic views in {out} (truth: {out / 'truth.yaml'})")
    return 0


def main(argv: list[str] | None = None) -> int:
    from calibration.board import BoardError
    from calibration.calib_file import CalibrationFileError
    from calibration.capture import SessionError
    from calibration.handeye import MOUNTS, HandEyeError
    from calibration.intrinsics import DISTORTION_MODELS, CalibrationError

    ap = argparse.ArgumentParser(prog="pirl calibrate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("board", help="write the board image to print")
    p.add_argument("--out", default="board.png")
    p.add_argument("--ppm", type=float, default=5000.0, help="pixels per metre")
    _board_args(p)
    p = sub.add_parser("capture", help="capture views live: camera driver + /joint_states, Enter per pose")
    p.add_argument("--camera", required=True, help="realsense:<serial> | opencv:<device> | topic:<image topic>")
    p.add_argument("--camera-name", default="base_camera")
    p.add_argument("--out", required=True)
    p.add_argument("--poses", type=int, default=20)
    p.add_argument("--width", type=int), p.add_argument("--height", type=int)
    p.add_argument("--joint-states-topic", default="/joint_states")
    p.add_argument("--no-joints", action="store_true", help="intrinsics only: no arm")
    p.add_argument("--robot", default=DEFAULT_ROBOT, help="robot yaml whose safety: section names the joints")
    _board_args(p)
    p = sub.add_parser("intrinsics", help="intrinsics + distortion from a session's images")
    p.add_argument("session"), p.add_argument("--out", required=True)
    p.add_argument("--camera-name", default="")
    p.add_argument("--model", default="plumb_bob", choices=list(DISTORTION_MODELS))
    p.add_argument("--min-views", type=int, default=6)
    p = sub.add_parser("handeye", help="camera pose from a session's (joints, image) pairs")
    p.add_argument("session"), p.add_argument("--intrinsics", required=True), p.add_argument("--out", required=True)
    p.add_argument("--mount", required=True, choices=MOUNTS)
    p.add_argument("--robot", default=DEFAULT_ROBOT)
    p.add_argument("--max-view-px", type=float, default=1.0, help="skip views whose board pose fits worse")
    p = sub.add_parser("check", help="sim twin render over a real frame (overlay PNG)")
    p.add_argument("calibration"), p.add_argument("--out", default="overlay.png")
    p.add_argument("--session"), p.add_argument("--view"), p.add_argument("--image")
    p.add_argument("--joints", help="comma-separated arm joint positions (rad) of the frame")
    p.add_argument("--task", default="PushCube-v1")
    p = sub.add_parser("synth", help="a synthetic session with known truth (try the pipeline, tests, docs)")
    p.add_argument("--mount", default="eye_to_hand", choices=MOUNTS), p.add_argument("--out", required=True)
    p.add_argument("--views", type=int, default=20), p.add_argument("--intrinsic-views", type=int, default=20)
    p.add_argument("--robot", default=DEFAULT_ROBOT), p.add_argument("--seed", type=int, default=0)
    _board_args(p)
    a = ap.parse_args(argv)
    commands = {"board": cmd_board, "capture": cmd_capture, "intrinsics": cmd_intrinsics, "handeye": cmd_handeye,
                "check": cmd_check, "synth": cmd_synth}
    try:
        return commands[a.cmd](a)
    except (BoardError, CalibrationError, CalibrationFileError, HandEyeError, SessionError) as e:
        print(f"pirl calibrate {a.cmd}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
