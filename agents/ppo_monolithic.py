"""The monolithic baseline: one categorical PPO agent choosing the primitive at every state.

Over a task of options (Two Rooms) this is the hierarchical baseline: a policy over frozen
options. Its nets read the state as every learner does (`agents/encoders.py`): a one-hot row
on tabular tasks, the task's observation through a small CNN on tasks over images.

It runs in the same market, under the `env` mechanism with a solitary society: at each
auction it bids 1 credit for the primitive it picks and 0 for the others, so the allocation
is its action and no money but rewards moves. Its data comes from the bus like everyone
else's: the state auctioned, the primitive allocated and the reward paid, per episode; at an
episode's end each step becomes a sample. PPO settings are the primitives' (methods.md): clip
0.2, entropy 0.1, `epochs` passes (one) of minibatches of 256 over 4096 samples, value MSE +
1e-3 L2, grad-norm 40, Adam 4e-5 / 5e-3. A sample's target is its discounted return-to-go G_t
and its advantage G_t - V(s_t), normalised per minibatch; with `gae_lambda` set, its
advantage is GAE(lambda) over the episode (Schulman et al., 2016) from the value net as the
episode ends, and its target that advantage plus V(s_t). An episode's last step is terminal
either way (a time-out too, as docs/gymnasium.md says). The ratio's old log-probability is
the one the policy acted with, recorded when it bid: a sample may wait many updates for its
episode to end (128 episodes run at once), and a ratio against the policy of the update would
let back-to-back updates on the same old samples each move it a full clip further.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.distributions import Categorical

from agents.encoders import inputs, state_encoder
from agents.settings import PPOConfig
from ledger.events import ENVIRONMENT, Allocate, Bid, EpisodeEnd, Reward
from ledger.transaction import OWN, Transaction
from ledger.units import UNIT
from market.bus import Bus
from market.tasks import Task


class MonolithicPPO:
    """A categorical policy over a task's primitives, trained on episode returns."""

    def __init__(self, task: Task, config: PPOConfig, seed: int) -> None:
        self.config, self.task = config, task
        self.n_states, self.n_actions = task.n_states, task.n_primitives
        torch_seed, numpy_seed = np.random.SeedSequence(seed).generate_state(2)
        torch.manual_seed(int(torch_seed))
        self.generator = torch.Generator().manual_seed(int(torch_seed))
        self.rng = np.random.default_rng(int(numpy_seed))
        self.policy = _net(task, config, self.n_actions)
        self.value = _net(task, config, 1)
        self.policy_opt = torch.optim.Adam(self.policy.parameters(), lr=config.policy_lr)
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=config.value_lr)
        self._open: dict[int, list[Step]] = {}
        self._samples: list[Sample] = []
        self._acting: dict[int, NDArray[np.float32]] = {}
        """Each state of the last `bids` call: the log-probabilities the policy acted with."""
        self.updates: list[dict[str, float]] = []
        self.recent: deque[int] = deque(maxlen=1000)
        """The last primitives chosen (their shares are the mean one-hot bids)."""
        self.on_update: Callable[[dict[str, float]], None] | None = None
        """Called after every update with its metrics (for metrics files and snapshots)."""
        self.frozen = False
        """Act, but drop every batch instead of learning from it (an evaluation)."""

    def attach(self, bus: Bus) -> None:
        """Learn from every transaction the bus commits from now on."""
        bus.subscribe_all(self._on_transaction)

    @torch.no_grad()
    def bids(self, states: NDArray[np.int64]) -> NDArray[np.float64]:
        """One-hot bids: 1 credit for the sampled primitive at each state, 0 for the rest."""
        logits = self.policy(inputs(self.task, states))
        probs = torch.softmax(logits, -1).numpy()
        # the round's transactions, published before the next call, read these
        self._acting = dict(
            zip(states.tolist(), torch.log_softmax(logits, -1).numpy(), strict=True)
        )
        u = self.rng.random((len(states), 1))
        actions = np.minimum((probs.cumsum(axis=1) < u).sum(axis=1), self.n_actions - 1)
        self.recent.extend(actions.tolist())
        one_hot: NDArray[np.float64] = np.eye(self.n_actions)[actions]
        return one_hot

    def _on_transaction(self, tx: Transaction) -> None:
        episode = tx.header[2]
        state = action = None
        reward, ended = 0.0, False
        for model, v in tx.body:
            if model is Bid:
                state = v[OWN[Bid].index("state")]
            elif model is Allocate:
                action = v[OWN[Allocate].index("primitive")]
            elif model is Reward:
                src, dst, amount = v[0], v[1], v[2]
                reward = amount / UNIT if src == ENVIRONMENT else -amount / UNIT
                assert ENVIRONMENT in (src, dst)
            elif model is EpisodeEnd:
                ended = True
        if state is None or action is None:
            return
        row = self._acting.get(state)
        acted = None if row is None else float(row[action])
        self._open.setdefault(episode, []).append(Step(state, action, reward, acted))
        if ended:
            self._finish(self._open.pop(episode))

    def _finish(self, trajectory: list[Step]) -> None:
        states = np.array([step.state for step in trajectory], dtype=np.int64)
        rewards = np.array([step.reward for step in trajectory], dtype=np.float64)
        gamma, lam = self.config.gamma, self.config.gae_lambda
        if lam is None:
            targets = discounted(rewards, gamma)
            advantages: list[float | None] = [None] * len(trajectory)
        else:
            with torch.no_grad():
                values = self.value(inputs(self.task, states))[:, 0].double().numpy()
            adv = gae(rewards, values, gamma, lam)
            targets, advantages = adv + values, adv.tolist()
        for step, target, advantage in zip(trajectory, targets.tolist(), advantages, strict=True):
            self._samples.append(Sample(step.state, step.action, target, advantage, step.acted))
        if len(self._samples) >= self.config.batch:
            batch, self._samples = (
                self._samples[: self.config.batch],
                self._samples[self.config.batch :],
            )
            if not self.frozen:
                self._update(batch)

    def _update(self, batch: list[Sample]) -> None:
        cfg = self.config
        x = inputs(self.task, np.array([b.state for b in batch], dtype=np.int64))
        a = torch.tensor([b.action for b in batch])
        g = torch.tensor([b.target for b in batch], dtype=torch.float32)
        advantages = (
            None
            if cfg.gae_lambda is None
            else torch.tensor([b.advantage for b in batch], dtype=torch.float32)
        )
        # PPO's ratio is against the policy that acted; today's only where that is unknown
        old_logp = torch.tensor([b.acted or 0.0 for b in batch], dtype=torch.float32)
        unknown = [i for i, b in enumerate(batch) if b.acted is None]
        if unknown:
            with torch.no_grad():
                old_logp[unknown] = Categorical(logits=self.policy(x[unknown])).log_prob(a[unknown])
        losses = []
        for _ in range(cfg.epochs):
            order = torch.randperm(len(batch), generator=self.generator)
            for start in range(0, len(batch), cfg.minibatch):
                i = order[start : start + cfg.minibatch]
                values = self.value(x[i])[:, 0]
                adv = g[i] - values.detach() if advantages is None else advantages[i]
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                dist = Categorical(logits=self.policy(x[i]))
                ratio = torch.exp(dist.log_prob(a[i]) - old_logp[i])
                clipped = torch.clamp(ratio, 1 - cfg.clip, 1 + cfg.clip)
                policy_loss = -torch.min(ratio * adv, clipped * adv).mean()
                policy_loss = policy_loss - cfg.entropy_coef * dist.entropy().mean()
                l2 = torch.stack([(w**2).sum() for w in self.value.parameters()]).sum()
                value_loss = ((values - g[i]) ** 2).mean() + cfg.value_l2 * l2
                self.policy_opt.zero_grad()
                self.value_opt.zero_grad()
                (policy_loss + value_loss).backward()
                nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                nn.utils.clip_grad_norm_(self.value.parameters(), cfg.max_grad_norm)
                self.policy_opt.step()
                self.value_opt.step()
                losses.append(float(policy_loss.detach()))
        metrics = {"policy_loss": float(np.mean(losses)), "mean_return": float(g.mean())}
        self.updates.append(metrics)
        if self.on_update is not None:
            self.on_update(metrics)

    def mean_bids(self) -> list[float]:
        """Each primitive's mean (one-hot) bid over the last 1000 choices: its share."""
        counts = np.bincount(np.asarray(self.recent, dtype=np.int64), minlength=self.n_actions)
        return [float(c) / max(len(self.recent), 1) for c in counts]

    def state_dict(self) -> dict[str, Any]:
        """The nets, optimisers and random states (what a snapshot holds)."""
        return {
            "policy": self.policy.state_dict(),
            "value": self.value.state_dict(),
            "policy_opt": self.policy_opt.state_dict(),
            "value_opt": self.value_opt.state_dict(),
            "rng": self.rng.bit_generator.state,
            "generator": self.generator.get_state(),
            "updates": self.updates,
        }

    def load_parameters(self, state: dict[str, Any]) -> None:
        """Take the nets of a snapshot (a transfer: optimisers and data start afresh)."""
        self.policy.load_state_dict(state["policy"])
        self.value.load_state_dict(state["value"])

    def greedy(self, states: NDArray[np.int64] | None = None) -> NDArray[np.int64]:
        """The most likely primitive in each of `states` (every state of a tabular task)."""
        states = np.arange(self.n_states) if states is None else states
        with torch.no_grad():
            logits = self.policy(inputs(self.task, states))
        return np.asarray(logits.argmax(-1).numpy(), dtype=np.int64)


class Step(NamedTuple):
    """One auction of a running episode, as the learner heard it."""

    state: int
    action: int
    reward: float
    acted: float | None
    """log pi(action | state) of the policy that chose it (None: not known, as after a
    resume; the update then takes today's policy's)."""


class Sample(NamedTuple):
    """One step of a finished episode, as the update reads it."""

    state: int
    action: int
    target: float
    """What the value net regresses to: G_t, or with GAE the advantage plus V(s_t)."""
    advantage: float | None
    """GAE's advantage; None: G_t - V(s_t), taken at the update."""
    acted: float | None
    """The acting policy's log-probability of `action` (`Step.acted`)."""


def discounted(rewards: NDArray[np.float64], gamma: float) -> NDArray[np.float64]:
    """Each step's discounted return-to-go, the last step terminal."""
    out, g = np.empty_like(rewards), 0.0
    for t in range(len(rewards) - 1, -1, -1):
        g = float(rewards[t]) + gamma * g
        out[t] = g
    return out


def gae(
    rewards: NDArray[np.float64], values: NDArray[np.float64], gamma: float, lam: float
) -> NDArray[np.float64]:
    """GAE(lambda) advantages of one episode, its last step terminal: the sum over k of
    (gamma lambda)^k delta_{t+k}, delta_t = r_t + gamma V(s_{t+1}) - V(s_t)."""
    following = np.append(values[1:], 0.0)
    deltas = rewards + gamma * following - values
    return discounted(deltas, gamma * lam)


def _net(task: Task, config: PPOConfig, outputs: int) -> nn.Sequential:
    """The task's state encoder, a hidden layer of `config.hidden`, then `outputs`."""
    encoder = state_encoder(task, config.channels)
    return nn.Sequential(
        encoder,
        nn.Linear(encoder.size, config.hidden),
        nn.ReLU(),
        nn.Linear(config.hidden, outputs),
    )
