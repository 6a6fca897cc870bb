"""bundle -> Policy, refusing anything modified, unknown, unsafe or not matching the robot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pirl_robot.bundle.format import (MODEL_JSON, SPEC_JSON, STATS_JSON, WEIGHTS, BundleError,
                                      check_safetensors_header, read_json, read_manifest, verify_files)
from pirl_robot.checkpoint import CheckpointError, load_state_dict_strict, load_weights
from pirl_robot.flow.sampler import ChainConfig
from pirl_robot.models.factory import build_model
from pirl_robot.policy import Policy
from pirl_robot.spec import PolicySpec, SpecError
from pirl_robot.transforms import PolicyTransforms


@dataclass
class Bundle:
    """A loaded bundle: the policy plus what identifies it (for logs, recordings and reports)."""

    path: Path
    manifest: dict
    policy: Policy

    @property
    def bundle_id(self) -> str:
        return self.manifest["bundle_id"]

    @property
    def content_sha256(self) -> str:
        return self.manifest["content_sha256"]

    def camera_calibrations(self) -> dict:
        """Camera name -> calibration.CalibrationFile the policy was trained with (verified with the bundle)."""
        from calibration.calib_file import CalibrationFileError, load_calibration

        out = {}
        for cam, name in (self.manifest.get("camera_calibrations") or {}).items():
            try:
                out[cam] = load_calibration(self.path / name)
            except CalibrationFileError as e:
                raise BundleError(f"bundle {self.path}: {e}") from e
        return out


def open_bundle(bundle_dir: str | Path, robot_spec: PolicySpec | None = None, device: str = "cpu") -> Bundle:
    d = Path(bundle_dir)
    manifest = read_manifest(d)
    verify_files(d, manifest)
    check_safetensors_header(d / WEIGHTS)
    try:
        spec = PolicySpec.from_dict(read_json(d / SPEC_JSON))
    except (SpecError, TypeError) as e:
        raise BundleError(f"{d / SPEC_JSON}: invalid policy spec ({e})") from e
    if robot_spec is not None:
        try:
            spec.check_compatible(robot_spec)
        except SpecError as e:
            raise BundleError(f"bundle {d} does not fit this robot: {e}") from e
    model_meta = read_json(d / MODEL_JSON)
    try:
        model = build_model(model_meta["model_kind"], model_meta["model_config"], spec)
        load_state_dict_strict(model, load_weights(d / WEIGHTS), str(d / WEIGHTS))
        transforms = PolicyTransforms.from_dict(spec, read_json(d / STATS_JSON))
        sampler = ChainConfig.for_inference(model_meta.get("sampler", {}))
    except (KeyError, ValueError, TypeError, CheckpointError) as e:
        raise BundleError(f"bundle {d} cannot be loaded: {e}") from e
    model = model.to(device).eval()
    model.prepare_inference()  # pi0 / pi0.5 on CUDA: bf16 weights, fast path, CUDA graphs
    policy = Policy(spec=spec, model=model, transforms=transforms, sampler=sampler,
                    model_kind=model_meta["model_kind"])
    return Bundle(path=d, manifest=manifest, policy=policy)


def load_bundle(bundle_dir: str | Path, robot_spec: PolicySpec | None = None, device: str = "cpu") -> Policy:
    """The policy of a verified bundle. Raises BundleError with the reason on any refusal."""
    return open_bundle(bundle_dir, robot_spec, device).policy
