"""`pirl export`: turn a policy checkpoint into a deploy bundle (checksummed, no pickle), and check bundles.

    pirl export outputs/pushcube/checkpoints/last bundles/pushcube
    pirl export outputs/pushcube/checkpoints/last bundles/pushcube --overwrite
    pirl export --check bundles/pushcube                     # verify a bundle and print its manifest summary
    pirl export CKPT bundles/pushcube_rgb --camera-calibration base_camera=calib/base_camera.yaml
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from pirl_robot.bundle import BundleError, export_bundle, open_bundle

    ap = argparse.ArgumentParser(prog="pirl export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", nargs="?", help="checkpoint directory (policy.json + model.safetensors)")
    ap.add_argument("out", nargs="?", help="bundle directory to write")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    ap.add_argument("--check", metavar="BUNDLE", help="verify BUNDLE instead of exporting")
    ap.add_argument("--camera-calibration", action="append", default=[], metavar="CAMERA=YAML",
                    help="the calibration (pirl calibrate) a camera was trained with; the deploy node compares it "
                         "with the live camera (repeat per camera)")
    ns = ap.parse_args(argv)
    try:
        if ns.check:
            path = ns.check
        elif ns.checkpoint and ns.out:
            cals = dict(c.split("=", 1) for c in ns.camera_calibration if "=" in c)
            if len(cals) != len(ns.camera_calibration):
                ap.error("--camera-calibration takes CAMERA=path/to/calibration.yaml")
            path = export_bundle(ns.checkpoint, ns.out, overwrite=ns.overwrite, calibrations=cals)
        else:
            ap.error("give CHECKPOINT and OUT, or --check BUNDLE")
        b = open_bundle(path)
    except BundleError as e:
        print(f"pirl export: {e}", file=sys.stderr)
        return 1
    s = b.policy.spec
    print(f"bundle {b.path}  id {b.bundle_id}  ({b.policy.model_kind}, robot {s.robot}, {s.action_type}, "
          f"{s.state_dim} state / {s.action_dim} action entries, cameras {[c.name for c in s.cameras]}, "
          f"chunk {s.chunk_size}/{s.exec_horizon} at {s.control_hz} Hz)")
    print(f"source checkpoint sha256 {b.manifest['source_checkpoint']['sha256']}")
    for cam, name in (b.manifest.get("camera_calibrations") or {}).items():
        print(f"camera {cam}: trained with {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
