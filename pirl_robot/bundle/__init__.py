"""Deploy bundles: a policy checkpoint frozen into a self-contained, checksummed directory.

    from pirl_robot.bundle import export_bundle, load_bundle
    export_bundle("outputs/run/checkpoints/last", "bundles/pushcube")
    policy = load_bundle("bundles/pushcube", robot_spec=my_robot_spec)   # refuses on any mismatch
"""

from pirl_robot.bundle.export import export_bundle
from pirl_robot.bundle.format import BundleError, read_manifest
from pirl_robot.bundle.load import Bundle, load_bundle, open_bundle

__all__ = ["Bundle", "BundleError", "export_bundle", "load_bundle", "open_bundle", "read_manifest"]
