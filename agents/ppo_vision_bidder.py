"""The bidding primitive of Chang et al. (2020) over images: a Beta bid from a CNN, with PPO.

The same learner as `agents/ppo_bidder.py` (same Beta head, same PPO, same settings), for
tasks whose states are images (Mental Rotation, Two Rooms): each primitive's bid policy and
value net read the task's observation of the state through a small CNN, or a tanh layer
for a vector observation (`observation_features`: an MLP bidder for a Gymnasium Box),
instead of a one-hot row, so nothing can be tabulated per state and each net runs on every
sample. Clones share their primitive's nets and draw their bids independently.

Policy: Beta(mu * nu, (1 - mu) * nu), mu = sigmoid(.), nu = softplus(.), on CNN features and
a hidden layer; the head starts at exactly Beta(1, 1). Value: the same trunk shape, its own
weights, to one output. Each bidder contributes (s_t, its bid, its auction utility U_t) per
auction; PPO: advantage U - V(s) normalised per minibatch, clip, entropy bonus, value MSE +
L2, a grad-norm clip per primitive, Adam (settings: `agents.settings.PPOConfig`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.distributions import Beta

from agents.encoders import observation_features
from agents.settings import PPOConfig

Observe = Callable[[NDArray[np.int64]], NDArray[np.float32]]
"""A task's `observe`: state ids to observations (n, C, H, W)."""

_UNIFORM_NU = math.log(math.expm1(2.0))
"""softplus^-1(2): with mu = 1/2 this makes Beta(mu nu, (1 - mu) nu) = Beta(1, 1)."""


class BidNet(nn.Module):
    """One primitive's bid distribution at an observed state: Beta(alpha, beta)."""

    def __init__(self, shape: tuple[int, ...], channels: int, hidden: int) -> None:
        super().__init__()
        self.features = observation_features(shape, channels)
        self.hidden = nn.Linear(self.features.size, hidden)
        self.head = nn.Linear(hidden, 2)
        nn.init.zeros_(self.head.weight)  # every state starts at Beta(1, 1)
        with torch.no_grad():
            self.head.bias.copy_(torch.tensor([0.0, _UNIFORM_NU]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(torch.relu(self.hidden(self.features(x))))
        mu, nu = torch.sigmoid(out[:, 0]), nn.functional.softplus(out[:, 1])
        return mu * nu, (1 - mu) * nu


class ValueNet(nn.Module):
    """One primitive's V(s) at an observed state."""

    def __init__(self, shape: tuple[int, ...], channels: int, hidden: int) -> None:
        super().__init__()
        features = observation_features(shape, channels)
        self.net = nn.Sequential(
            features, nn.Linear(features.size, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, 0]  # type: ignore[no-any-return]


class VisionBank(nn.Module):
    """The bid policies and value nets of P primitives."""

    def __init__(self, n_primitives: int, shape: tuple[int, ...], config: PPOConfig) -> None:
        super().__init__()
        c, h = config.channels, config.hidden
        self.policies = nn.ModuleList(BidNet(shape, c, h) for _ in range(n_primitives))
        self.values = nn.ModuleList(ValueNet(shape, c, h) for _ in range(n_primitives))


class VisionBidders:
    """Draws every bidder's bid from its primitive's CNN and trains every primitive with PPO."""

    def __init__(
        self,
        observe: Observe,
        shape: tuple[int, ...],
        primitive_of: tuple[int, ...],
        config: PPOConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.config = config or PPOConfig()
        self.observe, self.primitive_of = observe, np.asarray(primitive_of)
        self.n_primitives = int(max(primitive_of)) + 1
        torch_seed, numpy_seed = np.random.SeedSequence(seed).generate_state(2)
        torch.manual_seed(int(torch_seed))  # parameter initialisation
        self.generator = torch.Generator().manual_seed(int(torch_seed))
        self.rng = np.random.default_rng(int(numpy_seed))
        self.bank = VisionBank(self.n_primitives, shape, self.config)
        cfg = self.config
        self.policy_opt = torch.optim.Adam(self.bank.policies.parameters(), lr=cfg.policy_lr)
        self.value_opt = torch.optim.Adam(self.bank.values.parameters(), lr=cfg.value_lr)

    @torch.no_grad()
    def bids(self, states: NDArray[np.int64]) -> NDArray[np.float64]:
        """Independent draws for every bidder at every state: shape (len(states), n_bidders)."""
        x = torch.as_tensor(self.observe(states))
        params = [net(x) for net in self.bank.policies]
        alpha = torch.stack([a for a, _ in params]).double().numpy()[self.primitive_of]
        beta = torch.stack([b for _, b in params]).double().numpy()[self.primitive_of]
        drawn: NDArray[np.float64] = np.clip(self.rng.beta(alpha, beta), 1e-6, 1 - 1e-6).T
        return drawn

    @torch.no_grad()
    def mean_bids(self, states: NDArray[np.int64]) -> NDArray[np.float64]:
        """Each primitive's mean bid at each state: shape (P, len(states))."""
        x = torch.as_tensor(self.observe(states))
        means = [a / (a + b) for a, b in (net(x) for net in self.bank.policies)]
        return np.asarray(torch.stack(means).double().numpy(), dtype=np.float64)

    def parameters_changed(self) -> None:
        """Nothing is cached between updates (kept for the learners' common interface)."""

    def update(
        self, states: NDArray[np.int64], bids: NDArray[np.float64], utilities: NDArray[np.float64]
    ) -> dict[str, float]:
        """One PPO pass over a batch per primitive: arrays of shape (P, batch)."""
        cfg = self.config
        p, n = states.shape
        x = torch.as_tensor(self.observe(states.reshape(-1)))
        x = x.reshape(p, n, *x.shape[1:])
        b = torch.as_tensor(bids, dtype=torch.float32).clamp(1e-6, 1 - 1e-6)
        u = torch.as_tensor(utilities, dtype=torch.float32)
        with torch.no_grad():
            old = torch.stack([_dist(net, x[i]).log_prob(b[i]) for i, net in self._policies()])
        stats: list[torch.Tensor] = []
        for _ in range(cfg.epochs):
            order = torch.randperm(n, generator=self.generator)
            for start in range(0, n, cfg.minibatch):
                mb = order[start : start + cfg.minibatch]
                stats.append(self._step(x[:, mb], b[:, mb], u[:, mb], old[:, mb]))
        surrogate, mse, entropy = torch.stack(stats).mean(0).double().tolist()
        return {"policy_loss": -surrogate - cfg.entropy_coef * entropy, "value_loss": mse,
                "entropy": entropy}  # fmt: skip

    def _policies(self) -> list[tuple[int, BidNet]]:
        return list(enumerate(self.bank.policies))  # type: ignore[arg-type]

    def _step(
        self, x: torch.Tensor, b: torch.Tensor, u: torch.Tensor, old: torch.Tensor
    ) -> torch.Tensor:
        """One gradient step of every primitive on its minibatch; returns the means of the
        clipped surrogate, the value's squared error and the entropy over primitives."""
        cfg = self.config
        loss = torch.zeros(())
        totals = torch.zeros(3)
        for i, policy in self._policies():
            value_net = self.bank.values[i]
            values = value_net(x[i])
            with torch.no_grad():
                diff = u[i] - values
                adv = (diff - diff.mean()) / (diff.std() + 1e-8)
            dist = _dist(policy, x[i])
            ratio = torch.exp(dist.log_prob(b[i]) - old[i])
            clipped = torch.clamp(ratio, 1 - cfg.clip, 1 + cfg.clip)
            surrogate = torch.min(ratio * adv, clipped * adv).mean()
            entropy = dist.entropy().mean()
            mse = ((values - u[i]) ** 2).mean()
            l2 = sum((w * w).sum() for w in value_net.parameters())
            loss = loss + mse + cfg.value_l2 * l2 - surrogate - cfg.entropy_coef * entropy
            totals += torch.stack([surrogate, mse, entropy]).detach()
        self.policy_opt.zero_grad()
        self.value_opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        for i, policy in self._policies():
            nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            nn.utils.clip_grad_norm_(self.bank.values[i].parameters(), cfg.max_grad_norm)
        self.policy_opt.step()
        self.value_opt.step()
        return totals / self.n_primitives


def _dist(policy: BidNet, x: torch.Tensor) -> Beta:
    alpha, beta = policy(x)
    return Beta(alpha, beta)
