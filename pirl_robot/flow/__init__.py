"""Denoising samplers for flow-matching policies: ODE, Flow-SDE, Flow-Noise, and their log-likelihoods."""

from pirl_robot.flow.sampler import Chain, ChainConfig, chain_log_prob, flow_matching_loss, sample_chain, time_grid

__all__ = ["Chain", "ChainConfig", "chain_log_prob", "flow_matching_loss", "sample_chain", "time_grid"]
