"""Export a real checkpoint to a bundle and load it back: identical actions for identical noise, and the
manifest records what the recorder and reports need."""

import json

import numpy as np
import pytest

from deploy_utils import panda_spec, save_tiny_checkpoint
from pirl_robot.bundle import export_bundle, load_bundle, open_bundle
from pirl_robot.bundle.format import MANIFEST, PAYLOAD, sha256_file
from pirl_robot.policy import Policy
from pirl_robot.spec import CameraSpec


@pytest.mark.parametrize("cameras", [(), (CameraSpec("base_camera", 32, 32),)], ids=["state", "camera"])
def test_roundtrip_same_actions_for_same_noise(tmp_path, cameras):
    spec = panda_spec(cameras=cameras)
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", spec)
    bundle_dir = export_bundle(ckpt, tmp_path / "bundle")
    original, bundled = Policy.load(ckpt), load_bundle(bundle_dir, robot_spec=spec)
    rng = np.random.default_rng(0)
    obs = {"state": rng.normal(size=spec.state_dim).astype(np.float32),
           "images": {c.name: rng.integers(0, 255, (c.height, c.width, 3), dtype=np.uint8) for c in cameras}}
    noise = rng.normal(size=(spec.chunk_size, spec.action_dim)).astype(np.float32)
    a, b = original.infer(obs, noise=noise)["actions"], bundled.infer(obs, noise=noise)["actions"]
    assert a.shape == (spec.chunk_size, spec.action_dim)
    np.testing.assert_array_equal(a, b)
    other = bundled.infer(obs, noise=noise + 1.0)["actions"]
    assert not np.allclose(a, other)  # the noise really drives the output
    assert bundled.spec == spec and bundled.sampler.mode == "ode"


def test_manifest_records_hashes_and_versions(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt")
    b = open_bundle(export_bundle(ckpt, tmp_path / "bundle"))
    m = json.loads((b.path / MANIFEST).read_text())
    assert set(m["files"]) == set(PAYLOAD)
    for name, entry in m["files"].items():
        assert entry["sha256"] == sha256_file(b.path / name)
    assert len(m["source_checkpoint"]["sha256"]) == 64 and m["pirl_robot_version"]
    assert b.bundle_id == m["content_sha256"][:16]
    # a different checkpoint gives a different source hash and bundle id
    b2 = open_bundle(export_bundle(save_tiny_checkpoint(tmp_path / "ckpt2", seed=1), tmp_path / "bundle2"))
    assert b2.manifest["source_checkpoint"]["sha256"] != m["source_checkpoint"]["sha256"]
    assert b2.bundle_id != b.bundle_id


def test_export_refuses_to_overwrite_and_keeps_old_bundle(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt")
    out = export_bundle(ckpt, tmp_path / "bundle")
    before = sha256_file(out / MANIFEST)
    with pytest.raises(Exception, match="not empty"):
        export_bundle(ckpt, out)
    assert sha256_file(out / MANIFEST) == before
    export_bundle(ckpt, out, overwrite=True)
    load_bundle(out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle")]  # no temp dirs left behind
