"""The one policy interface: observation validation, transforms, reproducible sampling, strict checkpoints."""

import json

import numpy as np
import pytest
import torch

from pirl_robot.checkpoint import CheckpointError
from pirl_robot.models.factory import build_model
from pirl_robot.policy import ObservationError, Policy
from pirl_robot.spec import CameraSpec, PolicySpec, SpecError
from pirl_robot.transforms import PolicyTransforms, Stats

ARM = [f"j{i}" for i in range(3)]


def make_spec(**kw) -> PolicySpec:
    base = dict(state_names=tuple(ARM + ["obj_x", "obj_y"]), action_names=tuple(ARM + ["gripper"]),
                action_state_index=(0, 1, 2, -1), delta_action_mask=(True, True, True, False), chunk_size=4,
                exec_horizon=4)
    base.update(kw)
    return PolicySpec(**base)


def make_policy(spec: PolicySpec | None = None, seed: int = 0) -> Policy:
    spec = spec or make_spec()
    torch.manual_seed(seed)
    model = build_model("flow_mlp", {"hidden": 32, "token_dim": 8, "obs_dim": 16}, spec)
    stats = PolicyTransforms(spec, Stats(torch.zeros(spec.state_dim), torch.full((spec.state_dim,), 2.0)),
                             Stats(torch.full((spec.action_dim,), 0.1), torch.full((spec.action_dim,), 0.5)))
    return Policy(spec=spec, model=model.eval(), transforms=stats)


def test_spec_rejects_inconsistent_fields_and_round_trips():
    with pytest.raises(SpecError, match="delta action"):
        make_spec(action_state_index=(0, 1, -1, -1))
    with pytest.raises(SpecError, match="exec_horizon"):
        make_spec(exec_horizon=5)
    spec = make_spec(cameras=(CameraSpec("wrist", 64, 48),))
    assert PolicySpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(SpecError, match="unknown spec fields"):
        PolicySpec.from_dict({**spec.to_dict(), "bogus": 1})


def test_spec_compatibility_names_every_mismatch():
    policy = make_spec(cameras=(CameraSpec("wrist", 64, 64),))
    robot = make_spec(state_names=tuple(["j1", "j0", "j2", "obj_x", "obj_y"]), cameras=(CameraSpec("wrist", 48, 64),))
    with pytest.raises(SpecError) as e:
        policy.check_compatible(robot)
    assert "state_names" in str(e.value) and "wrist" in str(e.value)


def test_delta_actions_come_back_absolute_relative_to_the_measured_state():
    policy = make_policy()
    state = np.array([0.3, -0.2, 1.0, 5.0, 6.0], np.float32)
    noise = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    a = policy.infer({"state": state}, noise=noise)["actions"]
    # The output pipeline: unnormalise (std 0.5, mean 0.1), then add the measured joint positions to the arm.
    raw = policy.to_batch({"state": state})
    model_actions = torch.as_tensor(noise).unsqueeze(0)
    out = policy.postprocess(model_actions, raw)[0].numpy()
    expected = noise * 0.5 + 0.1
    expected[:, :3] += state[:3]
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    assert a.shape == (4, 4) and np.isfinite(a).all()


def test_infer_is_reproducible_given_noise_and_validates_observations():
    policy = make_policy()
    obs = {"state": np.linspace(-1, 1, 5)}
    noise = np.random.default_rng(1).standard_normal((4, 4))
    np.testing.assert_array_equal(policy.infer(obs, noise=noise)["actions"], policy.infer(obs, noise=noise)["actions"])
    with pytest.raises(ObservationError, match="5"):
        policy.infer({"state": np.zeros(4)})
    with pytest.raises(ObservationError, match="NaN"):
        policy.infer({"state": np.array([0, 0, np.nan, 0, 0])})
    cam_policy = make_policy(make_spec(cameras=(CameraSpec("wrist", 32, 32),)))
    with pytest.raises(ObservationError, match="wrist"):
        cam_policy.infer({"state": np.zeros(5), "images": {}})
    with pytest.raises(ObservationError, match="expected"):
        cam_policy.infer({"state": np.zeros(5), "images": {"wrist": np.zeros((16, 32, 3), np.uint8)}})
    out = cam_policy.infer({"state": np.zeros(5), "images": {"wrist": np.zeros((32, 32, 3), np.uint8)}})
    assert out["actions"].shape == (4, 4)


def test_image_only_policy_answers_a_single_observation_with_a_single_chunk():
    """The spec allows a policy without a state vector: single vs batched comes from the image's rank then."""
    spec = PolicySpec(state_names=(), action_names=("j0", "gripper"), action_state_index=(-1, -1), chunk_size=4,
                      exec_horizon=4, cameras=(CameraSpec("wrist", 32, 32),))
    policy = make_policy(spec)
    img = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    single = policy.infer({"images": {"wrist": img}}, noise=np.zeros((4, 2)))["actions"]
    batch = policy.infer({"images": {"wrist": img[None]}}, noise=np.zeros((1, 4, 2)))["actions"]
    assert single.shape == (4, 2) and batch.shape == (1, 4, 2)
    np.testing.assert_array_equal(single, batch[0])


def test_save_load_round_trip_is_exact(tmp_path):
    policy = make_policy()
    policy.save(tmp_path / "ckpt")
    loaded = Policy.load(tmp_path / "ckpt")
    obs, noise = {"state": np.arange(5.0)}, np.ones((4, 4))
    np.testing.assert_array_equal(policy.infer(obs, noise=noise)["actions"], loaded.infer(obs, noise=noise)["actions"])
    assert loaded.spec == policy.spec


def test_strict_loading_refuses_mismatched_or_corrupt_checkpoints(tmp_path):
    make_policy().save(tmp_path / "a")
    # Same kind, different width: the weights do not fit the model the config builds.
    meta = json.loads((tmp_path / "a" / "policy.json").read_text())
    meta["model_config"]["hidden"] = 48
    (tmp_path / "a" / "policy.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        Policy.load(tmp_path / "a")
    make_policy().save(tmp_path / "b")
    (tmp_path / "b" / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        Policy.load(tmp_path / "b")
    with pytest.raises(CheckpointError, match="not a policy checkpoint"):
        Policy.load(tmp_path / "missing")
    make_policy().save(tmp_path / "c")
    (tmp_path / "c" / "policy.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        Policy.load(tmp_path / "c")


def test_sampler_settings_load_with_the_old_option_name_and_refuse_unknown_ones(tmp_path):
    make_policy().save(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "policy.json").read_text())
    sampler = meta["sampler"]
    sampler["mixed_min_step"] = sampler.pop("first_stochastic_step")  # as written before the rename
    (tmp_path / "old" / "policy.json").write_text(json.dumps(meta))
    assert Policy.load(tmp_path / "old").sampler.mode == "ode"
    sampler["warp_factor"] = 9
    (tmp_path / "old" / "policy.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"sampler settings: unknown keys \['warp_factor'\]"):
        Policy.load(tmp_path / "old")


def test_pirl_eval_sampler_section_picks_the_sampler_and_refuses_bad_settings():
    from pirl_robot.config import ConfigError, compose
    from pirl_robot.evaluate import eval_sampler
    from pirl_robot.flow.sampler import ChainConfig

    saved = ChainConfig(num_steps=5, mode="ode")
    default = compose("eval", ["checkpoint=unused"]).sampler
    assert eval_sampler(saved, default) == ChainConfig(num_steps=5, mode="ode", noise_level=0.5)  # the deployed one
    rollout = eval_sampler(saved, {**default, "mode": "sde", "noise_level": 1.0, "first_stochastic_step": 4})
    assert (rollout.num_steps, rollout.mode, rollout.noise_level, rollout.first_stochastic_step) == (5, "sde", 1.0, 4)
    policy = make_policy()
    raw = policy.to_batch({"state": np.zeros((3, policy.spec.state_dim), np.float32)})
    noise = torch.randn(3, policy.spec.chunk_size, policy.spec.action_dim, generator=torch.Generator().manual_seed(0))
    ode = policy.sample(raw, noise=noise)[0].actions
    sde = policy.sample(raw, eval_sampler(policy.sampler, {"mode": "sde", "first_stochastic_step": 3}), noise=noise,
                        generator=torch.Generator().manual_seed(1))[0]
    assert torch.equal(sde.xs[:, :4], policy.sample(raw, noise=noise)[0].xs[:, :4])  # ODE up to the last step
    assert not torch.allclose(sde.actions, ode)  # which is stochastic
    with pytest.raises(ConfigError, match=r"sampler: unknown keys \['nose_level'\]"):
        eval_sampler(saved, {"nose_level": 1.0})
    with pytest.raises(ConfigError, match="first_stochastic_step=5"):
        eval_sampler(saved, {"mode": "sde", "first_stochastic_step": 5})
