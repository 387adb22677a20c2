"""The bidding primitive of Chang et al. (2020): a Beta-distributed bid learned with PPO.

Every primitive has its own bid policy psi and value net V; clones share them. For speed
the parameters of all P primitives are stacked, so one batched call draws the bids of every
bidder for a whole batch of states, and one update step trains every primitive (their
parameters, losses and gradient-norm clips stay separate).

Policy: Beta(mu * nu, (1 - mu) * nu), mu = sigmoid(.), nu = softplus(.), on a linear layer of
width 16 over the one-hot state; the head starts at exactly Beta(1, 1), uniform on (0, 1).
Value: an MLP [state, 16, 1] with ReLU. Each bidder, winner or loser, contributes one sample
(s_t, its bid, its auction utility U_t) per auction: a contextual bandit, nothing bootstrapped.
PPO: advantage U - V(s) normalised over the batch, clip 0.2, entropy 0.1, one pass of
minibatches of 256 over 4096 samples, value loss MSE + 1e-3 L2, grad-norm 40, Adam 4e-5
(policy) and 5e-3 (value).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.distributions import Beta


class PPOConfig(BaseModel):
    """Hyper-parameters of the bidding primitives (methods.md, "Learning")."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hidden: int = Field(16, ge=1, description="width of the encoder and the value net")
    gamma: float = Field(0.99, gt=0, le=1, description="discount inside the auction utility")
    clip: float = Field(0.2, gt=0, description="PPO ratio clip")
    entropy_coef: float = Field(0.1, ge=0, description="weight of the Beta's entropy bonus")
    batch: int = Field(4096, ge=1, description="samples per primitive collected per update")
    minibatch: int = Field(256, ge=1, description="samples per gradient step")
    epochs: int = Field(1, ge=1, description="passes over each batch")
    value_l2: float = Field(1e-3, ge=0, description="L2 weight on the value net's parameters")
    max_grad_norm: float = Field(40.0, gt=0, description="per-primitive gradient-norm clip")
    policy_lr: float = Field(4e-5, gt=0, description="Adam step size of the bid policy")
    value_lr: float = Field(5e-3, gt=0, description="Adam step size of the value net")


_UNIFORM_NU = math.log(math.expm1(2.0))
"""softplus^-1(2): with mu = 1/2 this makes Beta(mu nu, (1 - mu) nu) = Beta(1, 1)."""


def _stacked(p: int, n_in: int, n_out: int, scale: float | None) -> nn.Parameter:
    """P independent weight matrices (p, n_in, n_out); zeros when `scale` is None."""
    w = torch.zeros(p, n_in, n_out)
    if scale is not None:
        nn.init.uniform_(w, -scale, scale)
    return nn.Parameter(w)


class BidderBank(nn.Module):
    """The bid policies and value nets of P primitives over one-hot states, stacked."""

    def __init__(self, n_primitives: int, n_states: int, hidden: int = 16) -> None:
        super().__init__()
        p, s, h = n_primitives, n_states, hidden
        bound = 1 / math.sqrt(s)
        self.enc_w, self.enc_b = _stacked(p, s, h, bound), nn.Parameter(torch.zeros(p, 1, h))
        self.head_w = _stacked(p, h, 2, None)  # zero weights: every state starts uniform
        self.head_b = nn.Parameter(torch.tensor([0.0, _UNIFORM_NU]).repeat(p, 1, 1))
        self.v1_w, self.v1_b = _stacked(p, s, h, bound), nn.Parameter(torch.zeros(p, 1, h))
        self.v2_w, self.v2_b = (
            _stacked(p, h, 1, 1 / math.sqrt(h)),
            nn.Parameter(torch.zeros(p, 1, 1)),
        )
        self.n_states = n_states

    def policy_params(self) -> list[nn.Parameter]:
        """The bid policy's parameters."""
        return [self.enc_w, self.enc_b, self.head_w, self.head_b]

    def value_params(self) -> list[nn.Parameter]:
        """The value net's parameters."""
        return [self.v1_w, self.v1_b, self.v2_w, self.v2_b]

    def _one_hot(self, states: torch.Tensor) -> torch.Tensor:
        """(P, m, S): shared states (m,) seen by every primitive, or (P, m) one batch each."""
        x = nn.functional.one_hot(states, self.n_states).float()
        return x.expand(self.enc_w.shape[0], -1, -1) if states.dim() == 1 else x

    def distribution(self, states: torch.Tensor) -> Beta:
        """Each primitive's bid distribution at each state: batch shape (P, m)."""
        h = torch.relu(torch.einsum("pms,psh->pmh", self._one_hot(states), self.enc_w) + self.enc_b)
        out = torch.einsum("pmh,pho->pmo", h, self.head_w) + self.head_b
        mu, nu = torch.sigmoid(out[..., 0]), nn.functional.softplus(out[..., 1])
        return Beta(mu * nu, (1 - mu) * nu)

    def value(self, states: torch.Tensor) -> torch.Tensor:
        """Each primitive's V(s): shape (P, m)."""
        h = torch.relu(torch.einsum("pms,psh->pmh", self._one_hot(states), self.v1_w) + self.v1_b)
        return (torch.einsum("pmh,pho->pmo", h, self.v2_w) + self.v2_b)[..., 0]


class PPOBidders:
    """Draws every bidder's bid in one call and trains every primitive with PPO."""

    def __init__(
        self,
        n_states: int,
        primitive_of: tuple[int, ...],
        config: PPOConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.config = config or PPOConfig()
        self.primitive_of = torch.tensor(primitive_of)
        self.n_primitives = int(max(primitive_of)) + 1
        torch_seed, numpy_seed = np.random.SeedSequence(seed).generate_state(2)
        torch.manual_seed(int(torch_seed))  # parameter initialisation
        self.generator = torch.Generator().manual_seed(int(torch_seed))
        self.rng = np.random.default_rng(int(numpy_seed))
        self.bank = BidderBank(self.n_primitives, n_states, self.config.hidden)
        self.policy_opt = torch.optim.Adam(self.bank.policy_params(), lr=self.config.policy_lr)
        self.value_opt = torch.optim.Adam(self.bank.value_params(), lr=self.config.value_lr)
        self._table: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None

    @torch.no_grad()
    def bids(self, states: NDArray[np.int64]) -> NDArray[np.float64]:
        """Independent draws for every bidder at every state: shape (len(states), n_bidders).

        Clones draw separately from their primitive's one distribution; the draws come from
        the bank's own NumPy generator, so a seed fixes them.
        """
        alpha, beta = self._bid_table()
        return np.clip(self.rng.beta(alpha[:, states], beta[:, states]), 1e-6, 1 - 1e-6).T

    def _bid_table(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Every bidder's Beta parameters in every state, (n_bidders, n_states).

        Speed: the states are one-hot and the parameters change only at an update, so the
        table is computed once per update and bids are drawn from it without torch.
        """
        if self._table is None:
            with torch.no_grad():
                dist = self.bank.distribution(torch.arange(self.bank.n_states))
            self._table = (
                dist.concentration1[self.primitive_of].double().numpy(),
                dist.concentration0[self.primitive_of].double().numpy(),
            )
        return self._table

    def parameters_changed(self) -> None:
        """Forget the cached bid table (after an update or a loaded snapshot)."""
        self._table = None

    def update(
        self, states: NDArray[np.int64], bids: NDArray[np.float64], utilities: NDArray[np.float64]
    ) -> dict[str, float]:
        """One PPO pass over a batch per primitive: arrays of shape (P, batch)."""
        cfg = self.config
        s = torch.as_tensor(states)
        b = torch.as_tensor(bids, dtype=torch.float32).clamp(1e-6, 1 - 1e-6)
        u = torch.as_tensor(utilities, dtype=torch.float32)
        with torch.no_grad():
            old_logp = self._log_prob(s, b)
        n = s.shape[1]
        order = torch.randperm(n, generator=self.generator)
        stats: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "entropy": []}
        for _ in range(cfg.epochs):
            for start in range(0, n, cfg.minibatch):
                idx = order[start : start + cfg.minibatch]
                self._step(s[:, idx], b[:, idx], u[:, idx], old_logp[:, idx], stats)
        self.parameters_changed()
        return {k: float(np.mean(v)) for k, v in stats.items()}

    def _log_prob(self, s: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """log psi(b | s) of each primitive's own samples: inputs and output (P, m)."""
        logp: torch.Tensor = self.bank.distribution(s).log_prob(b)
        return logp

    def _step(
        self,
        s: torch.Tensor,
        b: torch.Tensor,
        u: torch.Tensor,
        old_logp: torch.Tensor,
        stats: dict[str, list[float]],
    ) -> None:
        cfg = self.config
        values = self.bank.value(s)
        adv = u - values.detach()
        adv = (adv - adv.mean(dim=1, keepdim=True)) / (adv.std(dim=1, keepdim=True) + 1e-8)
        dist = self.bank.distribution(s)
        ratio = torch.exp(dist.log_prob(b) - old_logp)
        clipped = torch.clamp(ratio, 1 - cfg.clip, 1 + cfg.clip)
        entropy = dist.entropy().mean(dim=1)
        policy_loss = (
            -torch.min(ratio * adv, clipped * adv).mean(dim=1) - cfg.entropy_coef * entropy
        )
        l2 = torch.stack([(w**2).sum() for w in self.bank.value_params()]).sum()
        value_loss = ((values - u) ** 2).mean(dim=1).sum() + cfg.value_l2 * l2
        self.policy_opt.zero_grad()
        self.value_opt.zero_grad()
        (policy_loss.sum() + value_loss).backward()
        for params in (self.bank.policy_params(), self.bank.value_params()):
            _clip_per_primitive(params, cfg.max_grad_norm)
        self.policy_opt.step()
        self.value_opt.step()
        stats["policy_loss"].append(float(policy_loss.detach().mean()))
        stats["value_loss"].append(float(value_loss.detach()) / self.n_primitives)
        stats["entropy"].append(float(entropy.detach().mean()))


def _clip_per_primitive(params: list[nn.Parameter], max_norm: float) -> None:
    """Clip each primitive's slice of the stacked gradients to norm `max_norm`."""
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch.stack([g.reshape(g.shape[0], -1).pow(2).sum(dim=1) for g in grads]).sum(0).sqrt()
    scale = torch.clamp(max_norm / (norms + 1e-6), max=1.0)
    for g in grads:
        g.mul_(scale.reshape(-1, *([1] * (g.dim() - 1))))
