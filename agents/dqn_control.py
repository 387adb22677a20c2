"""Decentralised deep Q-learning for cooperative control (Köpf et al. 2019): TER, IER, IQL.

N agents drive one known system x_{k+1} = f(x_k, u_k); agent i picks its scalar control
u_{i,k} from the shared discretised set U and earns its own reward r_{i,k} = g_i(x_k, u_{i,k}).
Agent i sees the state and the others' PREVIOUS controls u_{-i,k-1}, never their current
controls, policies or rewards: its Q-network maps (x_k, u_{-i,k-1}) to one value per control.
At k + 1 it learns u_{-i,k} (its next input), so its experience may hold them: the bootstrap
input, the impact, psi and the imagined experiences use them, acting never does.

The base learner is independent double DQN (the online net picks the next control, a target
net synced every `target_period` steps values it; Huber loss; no terminal states, since the
control tasks are continuing and time limits are truncations). Four switches add, following
methods.md Part 2 ([ours] marks the forms the paper left open; all configurable). eps_k is
the description's exploration rate, annealed from 1 to 0 over a fraction of the run; acting
keeps a floor of epsilon_end.
- TER: a macro-batch of B_k = t + (B - t)(1 - eps_k) [ours] uniformly from the buffer, then t
  of it without replacement with P(j) ∝ tau_j^rho [ours], tau_j = recency rank in (0, 1];
  every experience has its own step index k (the learner's env-step count).
- IER: each of the first `imagined` minibatch samples is imagined again, with probability
  eps_k with the others' controls removed, else (1 - eps_k) as the coordination experiences
  idle, coop1 and coop2; all from f and g, never stored. Agent i's imagined control is a
  control of U (the nearest to 0, to the others' mean), as trained on and as f, g see it.
- IQL: each sample's step size is eta in {alpha, sigma, beta}, by the sign of the TD error
  and the impact lambda_i = |u_i| / sum_j |u_j| [ours] (`credit_rate`, `blame_rate`).
- psi = sgn(u_i sum_{j != i} u_j), +1 at 0 [ours]: at +1 no coordination experiences and
  alpha where IQL would use sigma; at -1 the coordination experiences, at rate beta.
Without IQL every trained sample has rate alpha (imagined ones included): the rates belong to
IQL. The rates are step sizes: `RateAdam` (agents/q_bank.py) takes Adam's scale from the
gradient at rate alpha and its step from the rate-weighted one.

The replay buffer and TER's sampling live in agents/control_replay.py.

For speed the N agents' networks are stacked (one batched pass gives every agent's Q-values
and one optimiser step trains them all; parameters, inputs and losses stay separate), the
gradient is written out by hand, and the minibatches of an instant's gradient steps are
drawn and prepared together.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from numpy.typing import NDArray

from agents.control_replay import (
    Batch,
    ReplayBuffer,
    distinct_uniform,
    draw_without_replacement,
    macro_batch_size,
    own_columns,
    rank_probabilities,
)
from agents.q_bank import QBank, RateAdam
from agents.settings import ControlDQNConfig

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


class ControlDynamics(Protocol):
    """A known system driven by N agents: batched dynamics f and per-agent rewards g."""

    @property
    def n_agents(self) -> int:
        """N, the number of agents."""
        ...

    @property
    def state_dim(self) -> int:
        """d, the length of the state x."""
        ...

    @property
    def controls(self) -> FloatArray:
        """The shared discretised control set U, shape (M,); it contains 0.0."""
        ...

    def f(self, x: FloatArray, u: FloatArray) -> FloatArray:
        """Next states (B, d) from states (B, d) and joint controls (B, N)."""
        ...

    def g(self, x: FloatArray, u: FloatArray) -> FloatArray:
        """Rewards (B, N); column i depends on x and u[:, i] only."""
        ...


def schedule_epsilon(step: int, config: ControlDQNConfig, length: int) -> float:
    """The description's eps_k after `step` observed env steps: linear from epsilon_start to
    0 over `length` env steps, then 0 (methods.md Part 2: TER's B_k reaches B and IER's
    alone experiences stop once eps_k -> 0). TER and IER read it."""
    return config.epsilon_start * (1.0 - min(step / length, 1.0))


def exploration_rate(step: int, config: ControlDQNConfig, length: int) -> float:
    """The exploration rate: eps_k, but never below the floor epsilon_end (acting only)."""
    return max(schedule_epsilon(step, config, length), config.epsilon_end)


# --- IER (TER lives in agents/control_replay.py) -----------------------------------------


def nearest_control(controls: FloatArray, values: FloatArray) -> IntArray:
    """The index in U of the control nearest each value (the first of two equally near)."""
    out: IntArray = np.abs(values[..., None] - controls).argmin(axis=-1)
    return out


def others_sum(u: FloatArray) -> FloatArray:
    """sum_{j != i} u_j for every agent i of each row of joint controls (B, N).

    Summed over the others only (not total - u_i), so an exact 0 stays 0 for psi.
    """
    # Speed: one product with the "everyone but i" matrix; the zeros add exactly nothing.
    out: FloatArray = u @ _others_matrix(u.shape[-1])
    return out


@functools.cache
def _others_matrix(n: int) -> FloatArray:
    """Column i sums every agent but i: 1 - I."""
    out: FloatArray = 1.0 - np.eye(n)
    out.setflags(write=False)
    return out


def imagined_controls(controls: FloatArray, u: FloatArray) -> FloatArray:
    """IER's four imagined joint controls for every agent: (N, 4, S, N) from (N, S, N).

    Agent i's rows u[i] are its sampled joint controls; for each, in this order:
    alone: every agent but i at 0; idle: u_i = 0; coop1: u_i = the others' mean control;
    coop2: every other agent takes u_i. Agent i's own imagined control is the control in U
    nearest the description's value (0, the mean), so that the control the net trains on
    and the one f and g see are the same; the others' removed controls are exactly 0.
    """
    n = u.shape[0]
    mine = np.eye(n, dtype=bool)[:, None, :]  # agent i's own column, (N, 1, N)
    own = own_columns(u)[..., None]
    mean = own_columns(others_sum(u)) / max(n - 1, 1)
    idle = controls[nearest_control(controls, np.zeros(1))]
    snapped = controls[nearest_control(controls, mean)][..., None]
    return np.stack(
        [
            np.where(mine, u, 0.0),
            np.where(mine, idle, u),
            np.where(mine, snapped, u),
            np.broadcast_to(own, u.shape),
        ],
        axis=1,
    )


def _for_agent(controls: FloatArray, u: FloatArray, i: int) -> FloatArray:
    """`imagined_controls` of agent i alone, for joint controls u (B, N): (4, B, N)."""
    out: FloatArray = imagined_controls(controls, np.broadcast_to(u, (u.shape[1], *u.shape)))[i]
    return out


def without_others(u: FloatArray, i: int) -> FloatArray:
    """The joint controls (B, N) with every agent but i at 0."""
    out: FloatArray = _for_agent(np.zeros(1), u, i)[0]
    return out


def coordination_controls(
    controls: FloatArray, u: FloatArray, i: int
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """IER's imagined joint controls for agent i: idle, coop1, coop2 (each (B, N)).

    idle: u_i = 0; coop1: u_i = the others' mean control (each snapped to the nearest control
    in U); coop2: every other agent takes u_i.
    """
    _, idle, coop1, coop2 = _for_agent(controls, u, i)
    return idle, coop1, coop2


def outcome(
    dynamics: ControlDynamics, x: FloatArray, u: FloatArray, i: int
) -> tuple[FloatArray, FloatArray]:
    """(next state f(x, u), agent i's reward g_i(x, u)) of joint controls u (B, N) at x (B, d)."""
    return dynamics.f(x, u), dynamics.g(x, u)[:, i]


def imagined_without_others(
    dynamics: ControlDynamics, x: FloatArray, u: FloatArray, i: int
) -> tuple[FloatArray, FloatArray]:
    """IER's experience of agent i alone: x' = f(x, u_i, u_-i = 0), r = g_i(x, u_i, 0)."""
    return outcome(dynamics, x, without_others(u, i), i)


def coordination_experiences(
    dynamics: ControlDynamics, x: FloatArray, u: FloatArray, i: int
) -> tuple[tuple[FloatArray, FloatArray], ...]:
    """IER's idle, coop1 and coop2 experiences of agent i: a (next state, reward) pair each."""
    joints = coordination_controls(dynamics.controls, u, i)
    return tuple(outcome(dynamics, x, joint, i) for joint in joints)


# --- IQL and psi -------------------------------------------------------------------------


def impact(u: FloatArray) -> FloatArray:
    """IQL's lambda_i = |u_i| / sum_j |u_j| per row of joint controls (B, N); 1/N if all 0."""
    size = np.abs(u)
    total = size.sum(axis=-1, keepdims=True)
    out: FloatArray = np.where(total > 0, size / np.where(total > 0, total, 1.0), 1 / u.shape[-1])
    return out


def credit_rate(
    lam: FloatArray, low: float, high: float, middle: Any, config: ControlDQNConfig
) -> Any:
    """IQL's rate for a positive experience (TD error > 0) by impact lambda: the agent that
    did most earns most. alpha above the band, `middle` in it, beta below (methods.md Part 2,
    "IQL": sigma in the band; "The combined algorithm": alpha there where psi = +1)."""
    return np.where(lam > high, config.alpha, np.where(lam >= low, middle, config.beta))


def blame_rate(lam: FloatArray, low: float, config: ControlDQNConfig) -> FloatArray:
    """IQL's rate for a negative experience (TD error <= 0) by impact lambda: a responsible
    agent (lambda >= low) is discouraged strongly, at alpha; an irresponsible one weakly, at
    beta (methods.md Part 2, "IQL": "delta <= 0: alpha if lambda >= lambda_low, else beta")."""
    out: FloatArray = np.where(lam >= low, config.alpha, config.beta)
    return out


def iql_rate(
    delta: FloatArray,
    lam: FloatArray,
    config: ControlDQNConfig,
    n_agents: int,
    psi: FloatArray | None = None,
) -> FloatArray:
    """IQL's rate eta per sample from its TD error delta and impact lambda (same shapes):
    `credit_rate` where delta > 0, `blame_rate` where delta <= 0. low and high are the
    config's values over N. Where a given psi is +1, alpha replaces sigma."""
    low, high = config.lambda_low / n_agents, config.lambda_high / n_agents
    middle = config.sigma if psi is None else np.where(psi > 0, config.alpha, config.sigma)
    gain = credit_rate(lam, low, high, middle, config)
    out: FloatArray = np.where(delta > 0, gain, blame_rate(lam, low, config))
    return out


def coordination(u: FloatArray) -> FloatArray:
    """psi_i = sgn(u_i sum_{j != i} u_j) per row of joint controls (B, N); +1 where it is 0."""
    out: FloatArray = np.where(u * others_sum(u) < 0, -1.0, 1.0)
    return out


# --- inputs, buffer, learner -------------------------------------------------------------


def observations(x: FloatArray, prev_u: FloatArray) -> FloatArray:
    """Agent i's Q-net inputs (x, u_{-i}) from states (N, S, d) and joint controls (N, S, N).

    Row i of the leading axis is agent i's batch; its own column of prev_u is dropped.
    """
    n = prev_u.shape[0]
    picked = prev_u[:, :, _others(n)].diagonal(axis1=0, axis2=2).transpose(2, 0, 1)
    return np.concatenate([x, picked], axis=-1)


@functools.cache
def _others(n: int) -> IntArray:
    """Row i: the agents other than i, in order (N, N - 1)."""
    return np.array([[j for j in range(n) if j != i] for i in range(n)], dtype=np.int64)


class Part(NamedTuple):
    """Training samples of every agent (N, S, ...) and the rates IQL may give them."""

    inputs: FloatArray
    action: IntArray
    reward: FloatArray
    next_inputs: FloatArray
    joint: FloatArray
    """Joint controls (N, S, N) the samples' impact and psi come from."""
    mask: FloatArray
    """1 where the sample is trained on, 0 where it only pads an agent's rows."""
    rate: FloatArray
    """A fixed rate per sample (beta: coordination experiences under psi), or NaN: IQL's rule."""
    kind: IntArray
    """0 experienced; imagined: 1 alone, 2 idle, 3 coop1, 4 coop2."""


class Steps(NamedTuple):
    """The tensors of `times` gradient steps, the step first (times, N, S, ...)."""

    both: torch.Tensor
    """Each sample's input, then each sample's next input, with ones (times, N, 2 S, D + 1)."""
    action: torch.Tensor
    reward: torch.Tensor
    pick: torch.Tensor
    """One-hot of each sample's action over the padded outputs, times its mask over t: the
    Huber loss's gradient in the outputs per unit of clipped TD error."""
    gain: torch.Tensor
    """Each sample's rate over alpha if its TD error is positive (0 where masked)."""
    blame: torch.Tensor
    """... and if it is not."""


class ControlDQN:
    """N decentralised double-DQN agents on one known system, with optional TER, IER, IQL.

    Invariant: agent i's Q-values and control at step k depend only on x_k and the others'
    controls at k - 1; it learns only from its own reward.
    """

    def __init__(
        self,
        dynamics: ControlDynamics,
        config: ControlDQNConfig | None = None,
        seed: int = 0,
        features: Callable[[FloatArray], FloatArray] | None = None,
        budget: int | None = None,
    ) -> None:
        """`features` maps states (B, d) to the Q-nets' state inputs (B, d'); the identity
        if None (a pendulum's angle, say, enters better as its cosine and sine). `budget`,
        the run's env steps, sets the eps schedule's length (`schedule_steps`)."""
        self.dynamics, self.config = dynamics, config or ControlDQNConfig()
        cfg, n = self.config, dynamics.n_agents
        d = (features or _identity)(np.zeros((1, dynamics.state_dim))).shape[1]
        self.controls = np.asarray(dynamics.controls, dtype=np.float64)
        torch_seed, numpy_seed = np.random.SeedSequence(seed).generate_state(2)
        self.rng = np.random.default_rng(int(numpy_seed))
        generator = torch.Generator().manual_seed(int(torch_seed))
        self.online = QBank(n, d + n - 1, len(self.controls), cfg.hidden, generator)
        self.online.requires_grad_(False)  # trained by its own gradient, not autograd
        self.target = copy.deepcopy(self.online)
        self.optimizer = RateAdam(list(self.online.parameters()), lr=cfg.alpha)
        self.buffer = ReplayBuffer(cfg.capacity, dynamics.state_dim, n)
        self.schedule = cfg.schedule_steps(budget)
        """Env steps over which eps_k anneals to 0."""
        self.env_steps = 0
        """Observed env steps (every row of every `observe` call): TER's step index k and
        the schedule's clock."""
        self.features = features if features is not None else _identity
        self.updates = 0
        self._coordinating = np.zeros(n)
        self._rows = 0

    @property
    def n_agents(self) -> int:
        """N."""
        return self.dynamics.n_agents

    @property
    def epsilon(self) -> float:
        """The exploration rate at the current step (eps_k, floored at epsilon_end)."""
        return exploration_rate(self.env_steps, self.config, self.schedule)

    @property
    def schedule_epsilon(self) -> float:
        """The description's eps_k at the current step, which TER and IER read."""
        return schedule_epsilon(self.env_steps, self.config, self.schedule)

    @property
    def coordinating_fraction(self) -> FloatArray:
        """Per agent, the fraction of observed steps with psi = +1 (NaN before any)."""
        return self._coordinating / self._rows if self._rows else np.full(self.n_agents, np.nan)

    @torch.no_grad()
    def q_values(self, x: FloatArray, prev_u: FloatArray) -> FloatArray:
        """Every agent's Q-values (N, B, M) at states (B, d) after joint controls prev_u (B, N)."""
        n = self.n_agents
        inputs = self._inputs(
            np.broadcast_to(x, (n, *x.shape)), np.broadcast_to(prev_u, (n, *prev_u.shape))
        )
        q: torch.Tensor = self.online(torch.as_tensor(inputs, dtype=torch.float32))
        return q.double().numpy()

    def act(self, x: FloatArray, prev_u: FloatArray, epsilon: float) -> IntArray:
        """Every agent's control index (B, N): greedy, or uniform with probability epsilon.

        Agent i sees x (B, d) and the others' previous controls prev_u (B, N) (zeros before
        the first step); the draws come from the learner's own seeded generator.
        """
        greedy = self.q_values(x, prev_u).argmax(axis=-1).T
        explore = self.rng.random(greedy.shape) < epsilon
        random = self.rng.integers(0, len(self.controls), greedy.shape)
        out: IntArray = np.where(explore, random, greedy)
        return out

    def observe(
        self,
        x: FloatArray,
        prev_u: FloatArray,
        actions: IntArray,
        rewards: FloatArray,
        next_x: FloatArray,
    ) -> None:
        """Store step k of B parallel systems in every agent's buffer and count psi = +1.

        x, next_x (B, d); prev_u the joint controls at k - 1 (B, N); actions the control
        indices at k (B, N); rewards (B, N), agent i's in column i. Each row is stamped with
        the learner's env-step count, its own step index for TER's recency.
        """
        self._coordinating += (coordination(self.controls[actions]) > 0).sum(axis=0)
        self._rows += len(x)
        self.buffer.add(x, prev_u, actions, rewards, next_x, self.env_steps)
        self.env_steps += len(x)

    def update(self, times: int = 1) -> dict[str, float]:
        """`times` gradient steps of every agent, each on its own minibatch and imagined
        experiences (all drawn first, from the buffer as it is now).

        Returns the last step's statistics, or {} without a step while the buffer holds
        fewer than t experiences.
        """
        cfg = self.config
        if self.buffer.size < cfg.minibatch or times < 1:
            return {}
        eps = self.schedule_epsilon
        rows = self.sample_rows(eps, times)  # (N, times, t)
        batch = self.buffer.view(rows.reshape(self.n_agents, -1), self.controls)
        parts = [self.experienced(batch)]
        imagined = self._imagined(batch, eps, times) if cfg.ier else None
        if imagined is not None:
            parts.append(imagined)
        steps, stats = self._steps(parts, times), {}
        for j in range(times):
            stats = self._step(steps, j, last=j == times - 1)
        alone = coordinated = 0.0
        if imagined is not None:
            per_agent = self.n_agents * times
            alone = float(imagined.mask[imagined.kind == 1].sum()) / per_agent
            coordinated = float(imagined.mask[imagined.kind > 1].sum()) / per_agent
        return stats | {"epsilon": eps, "alone": alone, "coordination": coordinated}

    @torch.no_grad()
    def _step(self, steps: Steps, j: int, last: bool) -> dict[str, float]:
        """Gradient step j: double-DQN targets r + gamma Q'(x', argmax Q(x', .)) (no terminal
        states), the Huber loss's gradient, each sample at its IQL rate, one RateAdam step."""
        cfg = self.config
        both, action, reward = steps.both[j], steps.action[j], steps.reward[j]
        s = action.shape[1]
        trace = self.online.trace(both)  # Speed: inputs and next inputs in one pass
        q_all = trace[-1]
        q = q_all[:, :s].gather(-1, action).squeeze(-1)
        best = q_all[:, s:, : self.online.n_out].argmax(-1, keepdim=True)
        next_q = self.target.trace(both[:, s:])[-1].gather(-1, best).squeeze(-1)
        diff = q - (reward + cfg.gamma * next_q)  # -delta
        rate = torch.where(diff < 0, steps.gain[j], steps.blame[j])
        d_q = steps.pick[j] * diff.clamp(-1.0, 1.0)[..., None]
        self.optimizer.step(
            self.online.gradients([a[:, :s] for a in trace[:-1]], d_q, rate[..., None])
        )
        self.updates += 1
        if self.updates % cfg.target_period == 0:
            self.target.load_state_dict(self.online.state_dict())
        if not last:
            return {}
        t, size = cfg.minibatch, diff.abs()
        huber = torch.where(size < 1, 0.5 * diff**2, size - 0.5)
        return {
            "loss": (rate * huber).sum().item() / cfg.minibatch / self.n_agents,
            "q": q[:, :t].mean().item(),
            "rate": rate[:, :t].mean().item(),
        }

    def _steps(self, parts: list[Part], times: int) -> Steps:
        """The training tensors of `times` steps from parts whose samples run step by step
        along their second axis; IQL's two possible rates per sample (the TD error picks)."""
        n = self.n_agents

        def per_step(values: NDArray[Any]) -> NDArray[Any]:
            """(N, times * S, ...) -> (times, N, S, ...)."""
            split = values.reshape(n, times, -1, *values.shape[2:])
            return np.moveaxis(split, 1, 0)

        def joined(name: str) -> NDArray[Any]:
            return np.concatenate([per_step(getattr(p, name)) for p in parts], axis=2)

        mask, action = joined("mask"), joined("action")
        pick = np.zeros((*action.shape, self.online.layers[-1].shape[2]), dtype=np.float32)
        np.put_along_axis(pick, action[..., None], mask[..., None] / self.config.minibatch, -1)
        gain, blame = self._rates(parts, n)
        both = np.concatenate([joined("inputs"), joined("next_inputs")], axis=2)
        both = np.concatenate([both, np.ones((*both.shape[:-1], 1))], axis=-1)
        return Steps(
            torch.from_numpy(both).float(),
            torch.from_numpy(action)[..., None],
            torch.from_numpy(joined("reward")).float(),
            torch.from_numpy(pick),
            torch.from_numpy(np.concatenate([per_step(g) for g in gain], axis=2)).float(),
            torch.from_numpy(np.concatenate([per_step(b) for b in blame], axis=2)).float(),
        )

    def _rates(self, parts: list[Part], n: int) -> tuple[list[FloatArray], list[FloatArray]]:
        """Per part, each sample's rate over alpha for a positive and for a non-positive TD
        error: IQL's rule or the part's fixed rate, times the mask; the mask without IQL."""
        cfg = self.config
        if not cfg.iql:
            return [p.mask for p in parts], [p.mask for p in parts]
        gains: list[FloatArray] = []
        blames: list[FloatArray] = []
        for p in parts:
            lam = own_columns(impact(p.joint))
            psi = own_columns(coordination(p.joint)) if cfg.psi else None
            fixed = np.isnan(p.rate)
            for delta, out in ((1.0, gains), (0.0, blames)):
                eta = iql_rate(np.full(lam.shape, delta), lam, cfg, n, psi)
                out.append(p.mask * np.where(fixed, eta, p.rate) / cfg.alpha)
        return gains, blames

    def sample_rows(self, eps: float, times: int = 1) -> IntArray:
        """Every agent's t buffer rows for each of `times` steps (N, times, t): TER's two
        steps, or uniform without replacement."""
        cfg, size, rng, n = self.config, self.buffer.size, self.rng, self.n_agents
        t = cfg.minibatch
        if not cfg.ter:
            ages = rng.permuted(distinct_uniform(rng, size, (n * times, t)), axis=1)
            return self.buffer.rows_by_age(ages).reshape(n, times, t)
        b = min(macro_batch_size(t, cfg.macro_batch, eps), size)
        ages = distinct_uniform(rng, size, (n * times, b))
        macro = self.buffer.rows_by_age(ages[:, ::-1])  # oldest first
        p = np.broadcast_to(rank_probabilities(b, cfg.rho), macro.shape)
        picked = np.take_along_axis(macro, draw_without_replacement(p, t, rng), 1)
        return picked.reshape(n, times, t)

    def _inputs(self, x: FloatArray, prev_u: FloatArray) -> FloatArray:
        """Every agent's Q-net inputs from states (N, S, d) and joint controls (N, S, N)."""
        n, s, d = x.shape
        return observations(self.features(x.reshape(n * s, d)).reshape(n, s, -1), prev_u)

    def experienced(self, batch: Batch) -> Part:
        """The sampled experiences themselves, rated by IQL's rule."""
        inputs = self._inputs(batch.x, batch.prev_u)
        next_inputs = self._inputs(batch.next_x, batch.u)
        ones = np.ones(batch.action.shape)
        rule = np.full(batch.action.shape, np.nan)
        kind = np.zeros(batch.action.shape, dtype=np.int64)
        return Part(inputs, batch.action, batch.reward, next_inputs, batch.u, ones, rule, kind)

    def _imagined(self, batch: Batch, eps: float, times: int = 1) -> Part | None:
        """IER on the first `imagined` samples of each step's t: alone w.p. eps, else idle,
        coop1 and coop2.

        Under psi the coordination experiences are drawn only where psi_i = -1, and are
        trained at beta; without psi IQL's rule rates them like any sample. An imagined
        experience keeps the observed input (x_k, u_{-i,k-1}) and replaces the controls at k.
        None if nothing was drawn. Samples run step by step along the second axis.

        Speed: only the drawn experiences go through f, g and the networks; every agent's
        and step's are padded (mask 0) to the largest count, so all train in stacked passes.
        """
        cfg, n, s, t = self.config, self.n_agents, self.config.imagined, self.config.minibatch

        def first(values: NDArray[Any]) -> NDArray[Any]:
            """(N, times * t, ...) -> each step's first s samples (N, times, s, ...)."""
            return values.reshape(n, times, t, *values.shape[2:])[:, :, :s]

        x, u, prev_u = first(batch.x), first(batch.u), first(batch.prev_u)
        alone = self.rng.random((n, times, s)) < eps
        together = ~alone & (
            own_columns(coordination(u.reshape(n, -1, n))).reshape(alone.shape) < 0
            if cfg.psi
            else True
        )
        drawn = np.concatenate([alone, together, together, together], axis=2)  # (n, times, 4 s)
        count = int(drawn.sum(axis=2).max())
        if count == 0:
            return None
        pick = np.argsort(~drawn, axis=2, kind="stable")[..., :count]  # drawn first, in order
        kind, sample = np.divmod(pick, s)
        joints = imagined_controls(self.controls, u.reshape(n, times * s, n))
        joints = joints.reshape(n, 4, times, s, n).transpose(0, 2, 1, 3, 4)
        joint = np.take_along_axis(joints.reshape(n, times, 4 * s, n), pick[..., None], axis=2)
        at = sample[..., None]
        d = x.shape[-1]
        x_drawn = np.take_along_axis(x, at, axis=2).reshape(n, times * count, d)
        prev_drawn = np.take_along_axis(prev_u, at, axis=2).reshape(n, times * count, n)
        joint = joint.reshape(n, times * count, n)
        # Speed: every agent's drawn experiences through f and g in one call.
        flat_x, flat_u = x_drawn.reshape(-1, d), joint.reshape(-1, n)
        next_x = self.dynamics.f(flat_x, flat_u).reshape(n, -1, d)
        reward = own_columns(self.dynamics.g(flat_x, flat_u).reshape(n, -1, n))
        fixed = cfg.beta if cfg.psi else np.nan
        return Part(
            self._inputs(x_drawn, prev_drawn),
            own_columns(nearest_control(self.controls, joint)),
            reward,
            self._inputs(next_x, joint),
            joint,
            np.take_along_axis(drawn, pick, axis=2).reshape(n, -1).astype(np.float64),
            np.where(kind == 0, np.nan, fixed).reshape(n, -1),
            kind.reshape(n, -1) + 1,
        )


def _identity(x: FloatArray) -> FloatArray:
    """The states themselves as features."""
    return x
