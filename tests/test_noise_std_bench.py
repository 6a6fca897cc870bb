"""bench/noise_std.py reads a Flow-Noise checkpoint's noise net through the chain, from a saved checkpoint and a
LeRobot-format parquet of states."""

import numpy as np
import pandas as pd
import pytest
import torch

from bench_utils import load_bench
from deploy_utils import panda_spec
from pirl_robot.checkpoint import load_policy
from pirl_robot.models.factory import build_model
from pirl_robot.policy import Policy
from pirl_robot.transforms import PolicyTransforms, Stats

noise_std = load_bench("noise_std")


def _flow_noise_policy(spec, band=(0.2, 0.4)) -> Policy:
    torch.manual_seed(0)
    model = build_model("flow_mlp", {"hidden": 32, "depth": 2, "token_dim": 8, "obs_dim": 16, "noise_net": True,
                                     "noise_std_min": band[0], "noise_std_max": band[1]}, spec)
    stats = PolicyTransforms(spec, Stats(torch.zeros(spec.state_dim), torch.ones(spec.state_dim)),
                             Stats(torch.zeros(spec.action_dim), torch.ones(spec.action_dim)))
    return Policy(spec=spec, model=model.eval(), transforms=stats)


def test_noise_std_reads_the_saved_noise_net_on_dataset_states(tmp_path):
    spec = panda_spec()
    policy = _flow_noise_policy(spec)
    policy.save(tmp_path / "ckpt")
    rng = np.random.default_rng(0)
    (tmp_path / "demos" / "data" / "chunk-000").mkdir(parents=True)
    pd.DataFrame({"observation.state": list(rng.normal(size=(5, spec.state_dim)).astype(np.float32))}).to_parquet(
        tmp_path / "demos" / "data" / "chunk-000" / "file-000.parquet")

    states = noise_std.demo_states(tmp_path / "demos")
    assert states.shape == (5, spec.state_dim)
    loaded = load_policy(tmp_path / "ckpt")
    std = noise_std.noise_stds(loaded, states)
    assert std.shape == (5, loaded.model.chunk_size, loaded.model.action_dim)
    assert (std >= 0.2 - 1e-6).all() and (std <= 0.4 + 1e-6).all() and std.std() > 0  # inside the band, not constant

    # The std comes from the noise net: push its output up and every entry goes to the top of the band.
    torch.nn.init.constant_(loaded.model.noise_net.net[-1].bias, 50.0)
    torch.nn.init.zeros_(loaded.model.noise_net.net[-1].weight)
    assert torch.allclose(noise_std.noise_stds(loaded, states), torch.tensor(0.4), atol=1e-5)


def test_noise_std_refuses_a_policy_without_noise_net_and_a_bad_step(tmp_path):
    spec = panda_spec()
    torch.manual_seed(0)
    plain = Policy(spec=spec, model=build_model("flow_mlp", {"hidden": 32, "depth": 2, "token_dim": 8, "obs_dim": 16,
                                                                 "noise_net": False}, spec).eval(),
                   transforms=_flow_noise_policy(spec).transforms)
    states = np.zeros((2, spec.state_dim), np.float32)
    with pytest.raises(ValueError, match="no noise net"):
        noise_std.noise_stds(plain, states)
    with pytest.raises(ValueError, match="step must be"):
        noise_std.noise_stds(_flow_noise_policy(spec), states, num_steps=4, step=4)
    with pytest.raises(FileNotFoundError, match="no data"):
        noise_std.demo_states(tmp_path)
