"""A bundle that was tampered with, carries a pickle, lacks a file, or does not fit the robot is refused with
a message that says why."""

import json
import pickle
import shutil

import pytest
import torch

from deploy_utils import panda_spec, save_tiny_checkpoint
from pirl_robot.bundle import BundleError, export_bundle, load_bundle
from pirl_robot.bundle.format import MANIFEST, WEIGHTS, sha256_file
from pirl_robot.spec import CameraSpec


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    d = tmp_path_factory.mktemp("b")
    return export_bundle(save_tiny_checkpoint(d / "ckpt"), d / "bundle")


@pytest.fixture
def bundle(pristine, tmp_path):
    return shutil.copytree(pristine, tmp_path / "bundle")


def _resign(bundle, name):
    """What an attacker who also edits the manifest would do: make the checksums match again."""
    m = json.loads((bundle / MANIFEST).read_text())
    m["files"][name] = {"sha256": sha256_file(bundle / name), "bytes": (bundle / name).stat().st_size}
    (bundle / MANIFEST).write_text(json.dumps(m))


def test_pristine_loads(bundle):
    load_bundle(bundle, robot_spec=panda_spec())


def test_tampered_weights(bundle):
    data = bytearray((bundle / WEIGHTS).read_bytes())
    data[-5] ^= 0xFF  # flip bits of one weight, same size
    (bundle / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch for model.safetensors"):
        load_bundle(bundle)


def test_truncated_weights(bundle):
    (bundle / WEIGHTS).write_bytes((bundle / WEIGHTS).read_bytes()[:-100])
    with pytest.raises(BundleError, match="modified or truncated"):
        load_bundle(bundle)


def test_tampered_stats(bundle):
    stats = json.loads((bundle / "stats.json").read_text())
    stats["actions"]["mean"][0] += 0.5
    (bundle / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(BundleError, match="stats.json"):
        load_bundle(bundle)


class Boom:
    def __reduce__(self):
        return (exec, ("raise SystemExit('unpickled!')",))


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_pickle_payload_refused_even_when_resigned(bundle, how):
    if how == "pickle":
        (bundle / WEIGHTS).write_bytes(pickle.dumps({"w": Boom()}, protocol=4))
    else:
        torch.save({"w": torch.zeros(3), "x": Boom()}, bundle / WEIGHTS)
    _resign(bundle, WEIGHTS)
    with pytest.raises(BundleError, match="pickle"):
        load_bundle(bundle)


def test_extra_pickle_file_refused(bundle):
    (bundle / "model.pt").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(BundleError, match=r"unexpected file\(s\) \['model.pt'\]"):
        load_bundle(bundle)


@pytest.mark.parametrize("name", [WEIGHTS, "spec.json", MANIFEST])
def test_missing_file(bundle, name):
    (bundle / name).unlink()
    with pytest.raises(BundleError, match="missing|not found"):
        load_bundle(bundle)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt")  # a checkpoint is not a bundle
    with pytest.raises(BundleError, match="pirl export"):
        load_bundle(ckpt)


def test_unknown_format_version(bundle):
    m = json.loads((bundle / MANIFEST).read_text())
    m["format_version"] = 99
    (bundle / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="format_version 99 is not supported"):
        load_bundle(bundle)


@pytest.mark.parametrize("change, message", [
    (dict(state_names=tuple(reversed(panda_spec().state_names))), "state_names"),
    (dict(control_hz=50.0), "control_hz"),
    (dict(cameras=(CameraSpec("base_camera", 64, 64),)), None),  # an extra robot camera is fine
    (dict(robot="so101"), "robot"),
])
def test_wrong_robot_spec(bundle, change, message):
    robot = panda_spec(**change)
    if message is None:
        load_bundle(bundle, robot_spec=robot)
        return
    with pytest.raises(BundleError, match=f"does not fit this robot(.|\n)*{message}"):
        load_bundle(bundle, robot_spec=robot)


def test_camera_size_mismatch(tmp_path):
    spec = panda_spec(cameras=(CameraSpec("wrist", 32, 32),))
    b = export_bundle(save_tiny_checkpoint(tmp_path / "c", spec), tmp_path / "b")
    with pytest.raises(BundleError, match="camera 'wrist': policy 32x32 != robot config 48x48"):
        load_bundle(b, robot_spec=panda_spec(cameras=(CameraSpec("wrist", 48, 48),)))
    with pytest.raises(BundleError, match="camera 'wrist' missing"):
        load_bundle(b, robot_spec=panda_spec())


def test_export_refuses_corrupt_checkpoint(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt")
    (ckpt / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(BundleError, match="cannot export"):
        export_bundle(ckpt, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_pirl_export_cli(tmp_path, capsys):
    from pirl_robot.cli import main

    ckpt = save_tiny_checkpoint(tmp_path / "ckpt")
    assert main(["export", str(ckpt), str(tmp_path / "b")]) == 0
    assert "id " in capsys.readouterr().out
    assert main(["export", "--check", str(tmp_path / "b")]) == 0
    (tmp_path / "b" / "spec.json").write_text("{}")
    assert main(["export", "--check", str(tmp_path / "b")]) == 1
    assert "spec.json has 2 bytes" in capsys.readouterr().err
