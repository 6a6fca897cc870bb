"""bench/noise_std.py reads a Flow-Noise checkpoint's noise net at a step of its ODE chain (saved and loaded
through real safetensors files)."""

import pytest
import torch

from bench_utils import load_bench
from deploy_utils import panda_spec, tiny_policy
from pirl_robot.checkpoint import load_policy

noise_std = load_bench("noise_std")


def test_noise_std_reads_the_saved_noise_net(tmp_path):
    spec = panda_spec()
    tiny_policy(spec, noise_std_min=0.2, noise_std_max=0.4).save(tmp_path / "ckpt")
    loaded = load_policy(tmp_path / "ckpt")
    states = torch.randn(5, spec.state_dim, generator=torch.Generator().manual_seed(0))

    std = noise_std.noise_stds(loaded, states)
    assert std.shape == (5, loaded.model.chunk_size, loaded.model.action_dim)
    assert (std >= 0.2 - 1e-6).all() and (std <= 0.4 + 1e-6).all() and std.std() > 0  # inside the band, not constant

    # The std comes from the noise net: push its output up and every entry goes to the top of the band.
    torch.nn.init.constant_(loaded.model.noise_net.net[-1].bias, 50.0)
    torch.nn.init.zeros_(loaded.model.noise_net.net[-1].weight)
    assert torch.allclose(noise_std.noise_stds(loaded, states), torch.tensor(0.4), atol=1e-5)


def test_noise_std_refuses_a_policy_without_noise_net_and_a_bad_step():
    spec = panda_spec()
    states = torch.zeros(2, spec.state_dim)
    with pytest.raises(ValueError, match="no noise net"):
        noise_std.noise_stds(tiny_policy(spec, noise_net=False), states)
    with pytest.raises(ValueError, match="step must be"):
        noise_std.noise_stds(tiny_policy(spec), states, step=4)
