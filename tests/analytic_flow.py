"""A flow model whose velocity field is known in closed form: data ~ N(mu, sigma^2), x_t = (1-t) x0 + t eps.

Used to test the samplers against exact marginals; it implements the same FlowPolicyModel protocol as the
learned models, so the production sampler code runs unchanged.
"""

import torch

from pirl_robot.models.base import FlowPolicyModel


class GaussianFlow(FlowPolicyModel):
    def __init__(self, mu: float = 1.5, sigma: float = 0.3, chunk_size: int = 1, action_dim: int = 1):
        super().__init__()
        self.mu, self.sigma = mu, sigma
        self.chunk_size, self.action_dim = chunk_size, action_dim
        self._dummy = torch.nn.Parameter(torch.zeros(()))

    def encode(self, batch):
        return {"n": batch["n"]}

    def batch_size(self, ctx):
        return ctx["n"]

    def velocity(self, ctx, x_t, t):
        t = t.view(-1, 1, 1).to(x_t)
        var_t = (1 - t) ** 2 * self.sigma**2 + t**2
        centred = x_t - (1 - t) * self.mu
        e_eps = t * centred / var_t  # E[eps | x_t]
        e_x0 = self.mu + (1 - t) * self.sigma**2 * centred / var_t  # E[x0 | x_t]
        return e_eps - e_x0, x_t.unsqueeze(-1)
