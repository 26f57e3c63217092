"""The DLSA flow (docs/methods.md §2.2): a masked autoregressive flow (MAF) with RealNVP batch norm, and a fixed
Gaussian mixture in its latent space ("FlowGMM").

    flow = FlowGMM(dim=64, num_clusters=500)
    flow.log_joint(x)   # (N, K)  log p(x, k) = log N(u; mu_k, I) + log|det du/dx|, u = f(x)
    flow.log_prob(x)    # (N,)    log p(x) = logsumexp_k log p(x, k) - log K
    flow.posterior(x)   # (N, K)  q(k | x)
    flow.latent(x)      # (N, D)  u

Follows the MAF of Papamakarios et al. (2017) as DLSA's code uses it: MADE blocks map x to
u = (x - m(x)) * exp(-log a(x)), each followed by a batch-norm bijection; the input order is reversed
between blocks. Everything is plain tensor algebra without data-dependent Python branches, so the whole
flow exports to ONNX.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 connectivity mask (out, in)."""

    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor):
        super().__init__(in_features, out_features)
        # Not persistent: the mask follows from the layer sizes and the order, so checkpoints stay lean.
        self.register_buffer("mask", mask.bool(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.masked_fill(~self.mask, 0.0), self.bias)


def made_masks(input_degrees: torch.Tensor, hidden: int, num_hidden: int) -> list[torch.Tensor]:
    """Masks input→hidden, (hidden→hidden) x num_hidden, hidden→output for MADE (Germain et al. 2015).

    A hidden unit of degree h sees the inputs of degree <= h; output i sees hidden units of degree
    < degree(i), so m_i and log a_i depend only on the inputs that come before i in the order."""
    dim = len(input_degrees)
    hidden_degrees = torch.arange(hidden) % max(dim - 1, 1)
    degrees = [input_degrees] + [hidden_degrees] * (num_hidden + 1) + [input_degrees - 1]
    return [(after[:, None] >= before[None, :]) for before, after in zip(degrees[:-1], degrees[1:])]


class MADE(nn.Module):
    """One autoregressive block: x → (u, log|det| per dimension)."""

    def __init__(self, dim: int, hidden: int, input_degrees: torch.Tensor, num_hidden: int = 1):
        super().__init__()
        if dim < 2:
            raise ValueError("MADE needs at least 2 input dimensions")
        self.register_buffer("input_degrees", input_degrees.clone(), persistent=False)
        masks = made_masks(input_degrees, hidden, num_hidden)
        layers = [MaskedLinear(dim, hidden, masks[0])]
        for mask in masks[1:-1]:
            layers += [nn.ReLU(), MaskedLinear(hidden, hidden, mask)]
        layers += [nn.ReLU(), MaskedLinear(hidden, 2 * dim, masks[-1].repeat(2, 1))]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, log_a = self.net(x).chunk(2, dim=1)
        return (x - m) * torch.exp(-log_a), -log_a


class FlowBatchNorm(nn.Module):
    """The RealNVP batch-norm bijection y = exp(log_gamma) * (x - mean) / sqrt(var + eps) + beta.

    Training uses the batch statistics (and folds them into running averages with momentum 0.9, i.e.
    running = 0.9 * running + 0.1 * batch, as the reference code does); eval uses the running ones."""

    def __init__(self, dim: int, momentum: float = 0.9, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.log_gamma = nn.Parameter(torch.zeros(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            mean, var = x.mean(0), x.var(0)
            with torch.no_grad():
                self.running_mean.mul_(self.momentum).add_((1 - self.momentum) * mean)
                self.running_var.mul_(self.momentum).add_((1 - self.momentum) * var)
        else:
            mean, var = self.running_mean, self.running_var
        y = torch.exp(self.log_gamma) * (x - mean) / torch.sqrt(var + self.eps) + self.beta
        log_det = self.log_gamma - 0.5 * torch.log(var + self.eps)
        return y, log_det.expand_as(x)


class MAF(nn.Module):
    """`num_blocks` x (MADE, FlowBatchNorm); the order of the inputs is reversed from one block to the next."""

    def __init__(self, dim: int, hidden: int, num_blocks: int = 2, num_hidden: int = 1, batch_norm: bool = True):
        super().__init__()
        layers, degrees = [], torch.arange(dim)
        for _ in range(num_blocks):
            layers.append(MADE(dim, hidden, degrees, num_hidden))
            if batch_norm:
                layers.append(FlowBatchNorm(dim))
            degrees = degrees.flip(0)
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(u, log|det du/dx|) with the log-determinant summed over dimensions, shape (N,)."""
        log_det = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for layer in self.layers:
            x, layer_log_det = layer(x)
            log_det = log_det + layer_log_det.sum(dim=1)
        return x, log_det


class FlowGMM(nn.Module):
    """MAF + a Gaussian mixture in latent space with K fixed means ~ N(0, centre_std² I), identity
    covariance and uniform weights. The means are a buffer: saved and restored, never trained.

    `input_mean` / `input_scale` are a fixed affine map applied before the MAF (identity unless set, e.g. by
    `standardise_inputs`); its log-determinant is part of log p, so the density stays that of x."""

    def __init__(self, dim: int, num_clusters: int = 500, hidden: int | None = None, num_blocks: int = 2,
                 centre_std: float = 0.05, generator: torch.Generator | None = None):
        super().__init__()
        self.dim, self.num_clusters = dim, num_clusters
        self.flow = MAF(dim, hidden or dim, num_blocks)
        self.register_buffer("means", torch.randn(num_clusters, dim, generator=generator) * centre_std)
        self.register_buffer("input_mean", torch.zeros(dim))
        self.register_buffer("input_scale", torch.ones(dim))

    @torch.no_grad()
    def standardise_inputs(self, features: torch.Tensor) -> None:
        """Zero mean, unit variance on `features` (constant dimensions are only centred)."""
        std = features.std(0)
        self.input_mean.copy_(features.mean(0))
        self.input_scale.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(u, log|det|): the latent code and the change-of-variables term of every sample."""
        u, log_det = self.flow((x - self.input_mean) / self.input_scale)
        return u, log_det - torch.log(self.input_scale).sum()

    def joint_from_latent(self, u: torch.Tensor, log_det: torch.Tensor) -> torch.Tensor:
        # ||u - mu||² expanded, so memory stays N x K rather than N x K x D.
        squared = (u * u).sum(1, keepdim=True) - 2.0 * u @ self.means.T + (self.means * self.means).sum(1)
        return -0.5 * self.dim * math.log(2 * math.pi) - 0.5 * squared + log_det[:, None]

    def marginal_from_joint(self, log_joint: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(log_joint, dim=1) - math.log(self.num_clusters)

    def log_joint(self, x: torch.Tensor) -> torch.Tensor:
        return self.joint_from_latent(*self(x))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.marginal_from_joint(self.log_joint(x))

    def posterior(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.log_joint(x), dim=1)

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)[0]
