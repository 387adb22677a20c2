"""The Beta-bid PPO primitive on synthetic utilities (no market): init, draws, learning."""

from __future__ import annotations

import math

import numpy as np
import torch

from agents.ppo_bidder import BETA_FLOOR, PPOBidders, beta_features, policy_ratio
from agents.ppo_vision_bidder import VisionBidders
from agents.settings import PPOConfig


def test_every_primitive_starts_uniform_in_every_state() -> None:
    """The bid head starts at Beta(1, 1), uniform on (0, 1), whatever the state."""
    bank = PPOBidders(n_states=5, primitive_of=(0, 0, 1, 1)).bank
    dist = bank.distribution(torch.arange(5))
    assert torch.allclose(dist.concentration1, torch.ones(2, 5))
    assert torch.allclose(dist.concentration0, torch.ones(2, 5))


def test_bids_cover_every_bidder_and_clones_draw_independently() -> None:
    """One call gives every bidder's bid at every state; clones draw separately; seeds fix draws."""
    a = PPOBidders(n_states=3, primitive_of=(0, 0, 1, 1), seed=4)
    bids = a.bids(np.array([0, 1, 2, 2]))
    assert bids.shape == (4, 4) and ((bids > 0) & (bids < 1)).all()
    assert not np.allclose(bids[:, 0], bids[:, 1])  # a primitive and its clone
    again = PPOBidders(n_states=3, primitive_of=(0, 0, 1, 1), seed=4).bids(np.array([0, 1, 2, 2]))
    assert np.array_equal(bids, again)


def train(targets: np.ndarray, updates: int, seed: int = 0) -> PPOBidders:
    """Train P primitives whose utility for bid b in state s is 1 - |b - targets[p, s]|."""
    p, n_states = targets.shape
    config = PPOConfig(batch=512, minibatch=128, policy_lr=5e-3, entropy_coef=0.0)
    agent = PPOBidders(n_states, tuple(range(p)), config, seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(updates):
        states = rng.integers(0, n_states, size=config.batch)
        bids = agent.bids(states).T  # (P, batch): each primitive's own bids
        utilities = 1 - np.abs(bids - targets[:, states])
        agent.update(np.tile(states, (p, 1)), bids, utilities)
    return agent


def test_ppo_moves_each_primitives_bids_towards_its_best_bid_per_state() -> None:
    """The update raises the likelihood of better bids: mean bids approach each target."""
    targets = np.array([[0.2, 0.8], [0.8, 0.3]])
    agent = train(targets, updates=60)
    mean = agent.bank.distribution(torch.arange(2)).mean.detach().numpy()
    assert np.abs(mean - targets).max() < 0.05, mean


def test_without_updates_bids_stay_uniform() -> None:
    """Zero updates leave the mean bid at 1/2 (the learning above is the update's doing)."""
    agent = train(np.array([[0.2, 0.8]]), updates=0)
    mean = agent.bank.distribution(torch.arange(2)).mean.detach().numpy()
    assert np.allclose(mean, 0.5)


def test_a_sample_far_likelier_under_the_new_policy_leaves_the_nets_finite() -> None:
    """A step on samples whose old log-probability is 500 nats below the new one (a bid
    policy that concentrated between two updates): exp(500) overflows float32, and without
    the cap on the log-ratio the weights turn NaN."""
    obs = np.zeros((8, 4), dtype=np.float32)
    bidders = VisionBidders(lambda s: obs[s], (4,), (0, 0, 1, 1), PPOConfig(minibatch=16), 0)
    x = torch.as_tensor(obs[np.zeros((2, 16), dtype=np.int64)])
    features = beta_features(torch.full((2, 16), 0.5))
    u = torch.linspace(-1.0, 1.0, 32).reshape(2, 16)  # advantages of both signs
    with torch.no_grad():
        now = bidders._log_prob(x, features)
    assert float((now - (now - 500.0)).min()) > math.log(torch.finfo(torch.float32).max)
    bidders._step(x, features, u, now - 500.0)
    assert all(bool(torch.isfinite(p).all()) for p in bidders.bank.parameters())
    assert policy_ratio(torch.tensor([0.5, 500.0]), torch.zeros(2)).isfinite().all()


def test_a_policy_collapsed_onto_zero_bids_leaves_the_nets_finite() -> None:
    """A bid policy whose mu's logit reached -50 (alpha = mu nu about 1e-22, as a bucket
    brigade's did on CartPole without an entropy bonus) takes a step: the entropy's gradient
    holds trigamma(alpha), about 1 / alpha^2, which overflows float32, and without the floor
    on alpha and beta the weights turn NaN, entropy bonus or none."""
    obs = np.zeros((8, 4), dtype=np.float32)
    config = PPOConfig(minibatch=16, entropy_coef=0.0)
    bidders = VisionBidders(lambda s: obs[s], (4,), (0, 0, 1, 1), config, 0)
    with torch.no_grad():
        bidders.bank.policy.out.bias[..., 0] = -50.0
    x = torch.as_tensor(obs[np.zeros((2, 16), dtype=np.int64)])
    alpha, _ = bidders.bank.beta(x)
    assert bool((alpha == torch.tensor(BETA_FLOOR)).all())  # sigmoid(-50) nu is far below it
    features = beta_features(torch.full((2, 16), 1e-6))
    u = torch.linspace(-1.0, 1.0, 32).reshape(2, 16)
    with torch.no_grad():
        old = bidders._log_prob(x, features)
    bidders._step(x, features, u, old)
    assert all(bool(torch.isfinite(p).all()) for p in bidders.bank.parameters())
