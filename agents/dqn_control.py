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
methods.md Part 2 ([ours] marks the forms the paper left open; all configurable):
- TER: a macro-batch of B_k = t + (B - t)(1 - eps_k) [ours] uniformly from the buffer, then t
  of it without replacement with P(j) ∝ tau_j^rho [ours], tau_j = recency rank in (0, 1].
- IER: each of the first `imagined` minibatch samples is imagined again, with probability
  eps_k with the others' controls removed, else (1 - eps_k) as the coordination experiences
  idle, coop1 and coop2; all from f and g, never stored.
- IQL: each sample's TD loss is scaled by eta / alpha, eta in {alpha, sigma, beta} by the sign
  of the TD error and the impact lambda_i = |u_i| / sum_j |u_j| [ours].
- psi = sgn(u_i sum_{j != i} u_j), +1 at 0 [ours]: at +1 no coordination experiences and
  alpha where IQL would use sigma; at -1 the coordination experiences, at rate beta.
Without IQL every trained sample weighs 1 (imagined ones included): the rates belong to IQL.
Adam (step size alpha) normalises the gradient's scale, so IQL's rates act through their
ratios within a minibatch and across recent steps, not as absolute step sizes.

For speed the N agents' networks are stacked: one batched pass gives every agent's Q-values
and one optimiser step trains them all (parameters, inputs and losses stay separate).
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

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


def epsilon_at(step: int, config: ControlDQNConfig) -> float:
    """The exploration rate after `step` observed env steps: linear from start to end, then
    flat. (An env step is one step of one episode, however many run at once.)"""
    done = min(step / config.epsilon_steps, 1.0)
    return config.epsilon_start + done * (config.epsilon_end - config.epsilon_start)


# --- TER ---------------------------------------------------------------------------------


def macro_batch_size(t: int, b: int, eps: float) -> int:
    """TER's B_k = t + (B - t)(1 - eps_k) [ours], rounded: t while exploring, B at the end."""
    return t + round((b - t) * (1.0 - eps))


def recency_probabilities(k: IntArray, rho: float) -> FloatArray:
    """TER's P(j) ∝ tau_j^rho along the last axis of step indices k [ours].

    tau_j is the fraction of the batch collected no later than k_j: 1 for the newest, 1/n for
    the oldest; experiences of the same step share a rank.
    """
    n = k.shape[-1]
    rows = k.reshape(-1, n)
    # Speed: every row at once. In sorted order, a position's rank is one past the last
    # position holding the same step.
    order = np.argsort(rows, axis=-1, kind="stable")
    ordered = np.take_along_axis(rows, order, axis=-1)
    last = np.ones(rows.shape, dtype=bool)
    last[:, :-1] = ordered[:, 1:] != ordered[:, :-1]
    ends = np.where(last, np.arange(n), n)
    in_order = np.minimum.accumulate(ends[:, ::-1], axis=-1)[:, ::-1] + 1
    rank = np.empty_like(in_order)
    np.put_along_axis(rank, order, in_order, axis=-1)
    weight = (rank.reshape(k.shape) / n) ** rho
    out: FloatArray = weight / weight.sum(axis=-1, keepdims=True)
    return out


def draw_without_replacement(p: FloatArray, t: int, rng: np.random.Generator) -> IntArray:
    """t positions per row of p (R, n), drawn one after another ∝ p without replacement.

    Speed: an exponential race (Efraimidis and Spirakis): the t smallest E_j / p_j, with E_j
    standard exponential, are such a draw, for all rows at once.
    """
    with np.errstate(divide="ignore"):
        keys = rng.standard_exponential(size=p.shape) / p
    return np.argpartition(keys, t - 1, axis=-1)[:, :t]


# --- IER ---------------------------------------------------------------------------------


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
    alone: every agent but i at 0; idle: u_i = 0; coop1: u_i = the others' mean control,
    snapped to the nearest control in U; coop2: every other agent takes u_i.
    """
    n = u.shape[0]
    mine = np.eye(n, dtype=bool)[:, None, :]  # agent i's own column, (N, 1, N)
    own = _own(u)[..., None]
    mean = _own(others_sum(u)) / max(n - 1, 1)
    snapped = controls[nearest_control(controls, mean)][..., None]
    return np.stack(
        [
            np.where(mine, u, 0.0),
            np.where(mine, 0.0, u),
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

    idle: u_i = 0; coop1: u_i = the others' mean control, snapped to the nearest control in U;
    coop2: every other agent takes u_i.
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


def iql_rate(
    delta: FloatArray,
    lam: FloatArray,
    config: ControlDQNConfig,
    n_agents: int,
    psi: FloatArray | None = None,
) -> FloatArray:
    """IQL's rate eta per sample from its TD error delta and impact lambda (same shapes).

    delta > 0: alpha if lambda > high, sigma if low <= lambda <= high, beta if lambda < low;
    delta <= 0: alpha if lambda >= low, else beta. low and high are the config's values over
    N. Where a given psi is +1, alpha replaces sigma.
    """
    low, high = config.lambda_low / n_agents, config.lambda_high / n_agents
    middle = config.sigma if psi is None else np.where(psi > 0, config.alpha, config.sigma)
    gain = np.where(lam > high, config.alpha, np.where(lam >= low, middle, config.beta))
    blame = np.where(lam >= low, config.alpha, config.beta)
    out: FloatArray = np.where(delta > 0, gain, blame)
    return out


def coordination(u: FloatArray) -> FloatArray:
    """psi_i = sgn(u_i sum_{j != i} u_j) per row of joint controls (B, N); +1 where it is 0."""
    out: FloatArray = np.where(u * others_sum(u) < 0, -1.0, 1.0)
    return out


# --- networks, buffer, learner -----------------------------------------------------------


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


class QBank(nn.Module):
    """N agents' Q-nets [d + N - 1, h, h, M] with ReLU, stacked: one pass serves all of them.

    Speed: the output layer is stored PADDED columns wide (zeros beyond M, which get no
    gradient and so stay zero): a batched product 16 columns wide runs about three times as
    fast as one 5 wide on this CPU's BLAS.
    """

    PADDED = 16

    def __init__(
        self, n_agents: int, n_in: int, n_out: int, hidden: int, generator: torch.Generator
    ) -> None:
        super().__init__()
        self.n_out = n_out
        dims = [n_in, hidden, hidden, n_out]
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        for fan_in, fan_out in itertools.pairwise(dims):
            bound = 1 / math.sqrt(fan_in)  # torch.nn.Linear's default initialisation
            w, b = torch.empty(n_agents, fan_in, fan_out), torch.empty(n_agents, 1, fan_out)
            nn.init.uniform_(w, -bound, bound, generator)
            nn.init.uniform_(b, -bound, bound, generator)
            if fan_out == n_out and fan_out < self.PADDED:
                w = nn.functional.pad(w, (0, self.PADDED - fan_out))
                b = nn.functional.pad(b, (0, self.PADDED - fan_out))
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(b))
        # Speed: plain references, not a walk through the ParameterLists, in every pass.
        self._layers = list(zip(self.weights, self.biases, strict=True))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Every agent's Q-values (N, S, M) for its own inputs (N, S, d + N - 1)."""
        (w0, b0), (w1, b1), (w2, b2) = self._layers
        h = torch.relu(torch.baddbmm(b0, inputs, w0))
        h = torch.relu(torch.baddbmm(b1, h, w1))
        return torch.baddbmm(b2, h, w2)[..., : self.n_out]


class Batch(NamedTuple):
    """Each agent's view of its sampled experiences; the leading axis is the agent."""

    x: FloatArray
    """x_k (N, S, d)."""
    prev_u: FloatArray
    """Joint controls at k - 1 (N, S, N); agent i's input keeps the others' columns only."""
    u: FloatArray
    """Joint controls at k (N, S, N), known to agent i from k + 1 on."""
    action: IntArray
    """Agent i's own control index at k (N, S)."""
    reward: FloatArray
    """Agent i's own reward r_{i,k} (N, S)."""
    next_x: FloatArray
    """x_{k+1} (N, S, d)."""


class ReplayBuffer:
    """N agents' experience buffers, stacked in rings of NumPy arrays (oldest overwritten).

    Agent i's experience is chi_i = (x_k, u_{-i,k-1}, u_{i,k}, r_{i,k}, x_{k+1}, k) and u_{-i,k},
    learned at k + 1. Speed: the state, the step and the joint controls are the same in every
    agent's experience of a step, so they are stored once; rewards are stored per agent and
    agent i's view reads only its own column.
    """

    def __init__(self, capacity: int, state_dim: int, n_agents: int) -> None:
        self.x = np.zeros((capacity, state_dim))
        self.prev_u = np.zeros((capacity, n_agents))
        self.action = np.zeros((capacity, n_agents), dtype=np.int64)
        self.reward = np.zeros((capacity, n_agents))
        self.next_x = np.zeros((capacity, state_dim))
        self.k = np.zeros(capacity, dtype=np.int64)
        self.capacity, self.size, self._head = capacity, 0, 0

    def add(
        self,
        x: FloatArray,
        prev_u: FloatArray,
        action: IntArray,
        reward: FloatArray,
        next_x: FloatArray,
        k: int,
    ) -> None:
        """Store one step of B parallel systems (rows of each array), all stamped k."""
        rows = (self._head + np.arange(len(x))) % self.capacity
        self.x[rows], self.prev_u[rows], self.action[rows] = x, prev_u, action
        self.reward[rows], self.next_x[rows], self.k[rows] = reward, next_x, k
        self._head = int(rows[-1] + 1) % self.capacity
        self.size = min(self.size + len(x), self.capacity)

    def view(self, rows: IntArray, controls: FloatArray) -> Batch:
        """Each agent's experiences at its own buffer rows (N, S)."""
        action = self.action[rows]
        own = np.arange(rows.shape[0])[:, None]
        return Batch(
            self.x[rows],
            self.prev_u[rows],
            controls[action],
            _own(action),
            self.reward[rows, own],
            self.next_x[rows],
        )


class Part(NamedTuple):
    """Training samples of every agent (N, S, ...) and how IQL weighs them."""

    inputs: FloatArray
    action: IntArray
    reward: FloatArray
    next_inputs: FloatArray
    joint: FloatArray
    """Joint controls (N, S, N) the samples' impact and psi come from."""
    mask: FloatArray
    """1 where the sample is trained on, 0 where it only pads an agent's rows."""
    rate: FloatArray
    """A fixed rate per sample (beta: coordination experiences), or NaN: IQL's rule."""


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
    ) -> None:
        """`features` maps states (B, d) to the Q-nets' state inputs (B, d'); the identity
        if None (a pendulum's angle, say, enters better as its cosine and sine)."""
        self.dynamics, self.config = dynamics, config or ControlDQNConfig()
        cfg, n = self.config, dynamics.n_agents
        d = (features or _identity)(np.zeros((1, dynamics.state_dim))).shape[1]
        self.controls = np.asarray(dynamics.controls, dtype=np.float64)
        torch_seed, numpy_seed = np.random.SeedSequence(seed).generate_state(2)
        self.rng = np.random.default_rng(int(numpy_seed))
        generator = torch.Generator().manual_seed(int(torch_seed))
        self.online = QBank(n, d + n - 1, len(self.controls), cfg.hidden, generator)
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        # Speed: the fused Adam kernel (one call, not a loop over tensors)
        self.optimizer = torch.optim.Adam(self.online.parameters(), lr=cfg.alpha, fused=True)
        self.buffer = ReplayBuffer(cfg.capacity, dynamics.state_dim, n)
        self.steps = 0
        """Observed instants k (one per `observe` call, whatever its batch): TER's clock."""
        self.env_steps = 0
        """Observed env steps (every row of every `observe` call): the exploration clock."""
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
        """The exploration rate at the current step."""
        return epsilon_at(self.env_steps, self.config)

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
        indices at k (B, N); rewards (B, N), agent i's in column i. k is the learner's step
        counter (recency across episodes, which TER needs).
        """
        self._coordinating += (coordination(self.controls[actions]) > 0).sum(axis=0)
        self._rows += len(x)
        self.buffer.add(x, prev_u, actions, rewards, next_x, self.steps)
        self.steps += 1
        self.env_steps += len(x)

    def update(self) -> dict[str, float]:
        """One gradient step of every agent on its own minibatch and imagined experiences.

        Returns the step's statistics, or {} without a step while the buffer holds fewer
        than t experiences.
        """
        cfg, n = self.config, self.n_agents
        if self.buffer.size < cfg.minibatch:
            return {}
        eps = self.epsilon
        batch = self.buffer.view(self.sample_rows(eps), self.controls)
        parts = [self.experienced(batch)]
        imagined = self._imagined(batch, eps) if cfg.ier else None
        if imagined is not None:
            parts.append(imagined)
        q, target = self._td(parts)
        weight = self._weights(parts, (target - q).detach().double().numpy())
        huber = nn.functional.huber_loss(q, target, reduction="none")
        loss = (torch.as_tensor(weight, dtype=torch.float32) * huber).sum() / cfg.minibatch
        self.optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        self.updates += 1
        if self.updates % cfg.target_period == 0:
            self.target.load_state_dict(self.online.state_dict())
        alone = coordinated = 0.0
        if imagined is not None:
            fixed = ~np.isnan(imagined.rate)
            alone = float(imagined.mask[~fixed].sum()) / n
            coordinated = float(imagined.mask[fixed].sum()) / n
        return {
            "loss": loss.item() / n,
            "q": q[:, : cfg.minibatch].mean().item(),
            "epsilon": eps,
            "rate": float(weight[:, : cfg.minibatch].mean()),
            "alone": alone,
            "coordination": coordinated,
        }

    def _td(self, parts: list[Part]) -> tuple[torch.Tensor, torch.Tensor]:
        """Q(x, u_i) of every sample (N, S) and its double-DQN target r + gamma Q'(x', a*).

        a* = argmax of the online net at x', valued by the target net; no terminal states.
        """
        inputs, action, reward, next_inputs = (
            torch.as_tensor(np.concatenate([getattr(p, name) for p in parts], axis=1))
            for name in ("inputs", "action", "reward", "next_inputs")
        )
        q = self.online(inputs.float()).gather(-1, action[..., None]).squeeze(-1)
        with torch.no_grad():
            best = self.online(next_inputs.float()).argmax(-1, keepdim=True)
            next_q = self.target(next_inputs.float()).gather(-1, best).squeeze(-1)
            target = reward.float() + self.config.gamma * next_q
        return q, target

    def sample_rows(self, eps: float) -> IntArray:
        """Every agent's t buffer rows (N, t): TER's two steps, or uniform without replacement."""
        cfg, size, rng = self.config, self.buffer.size, self.rng
        if not cfg.ter:
            return np.stack(
                [rng.choice(size, cfg.minibatch, replace=False) for _ in range(self.n_agents)]
            )
        b = min(macro_batch_size(cfg.minibatch, cfg.macro_batch, eps), size)
        macro = np.stack(
            [rng.choice(size, b, replace=False, shuffle=False) for _ in range(self.n_agents)]
        )
        p = recency_probabilities(self.buffer.k[macro], cfg.rho)
        return np.take_along_axis(macro, draw_without_replacement(p, cfg.minibatch, rng), 1)

    def _inputs(self, x: FloatArray, prev_u: FloatArray) -> FloatArray:
        """Every agent's Q-net inputs from states (N, S, d) and joint controls (N, S, N)."""
        n, s, d = x.shape
        return observations(self.features(x.reshape(n * s, d)).reshape(n, s, -1), prev_u)

    def experienced(self, batch: Batch) -> Part:
        """The sampled experiences themselves, weighed by IQL's rule."""
        inputs = self._inputs(batch.x, batch.prev_u)
        next_inputs = self._inputs(batch.next_x, batch.u)
        ones = np.ones(batch.action.shape)
        rule = np.full(batch.action.shape, np.nan)
        return Part(inputs, batch.action, batch.reward, next_inputs, batch.u, ones, rule)

    def _imagined(self, batch: Batch, eps: float) -> Part | None:
        """IER on the first `imagined` samples: alone w.p. eps, else idle, coop1 and coop2.

        Under psi the coordination experiences are drawn only where psi_i = -1. An imagined
        experience keeps the observed input (x_k, u_{-i,k-1}) and replaces the controls at k.
        None if nothing was drawn.

        Speed: only the drawn experiences go through f, g and the networks; every agent's
        are padded (mask 0) to the largest agent's count, so all agents train in one
        stacked pass.
        """
        cfg, n, s = self.config, self.n_agents, self.config.imagined
        x, u, prev_u = batch.x[:, :s], batch.u[:, :s], batch.prev_u[:, :s]
        alone = self.rng.random((n, s)) < eps
        together = ~alone & (_own(coordination(u)) < 0 if cfg.psi else True)
        drawn = np.concatenate([alone, together, together, together], axis=1)  # (n, 4 s)
        count = int(drawn.sum(axis=1).max())
        if count == 0:
            return None
        pick = np.argsort(~drawn, axis=1, kind="stable")[:, :count]  # drawn first, in order
        kind, sample = np.divmod(pick, s)
        joints = imagined_controls(self.controls, u).reshape(n, 4 * s, n)
        joint = np.take_along_axis(joints, pick[..., None], axis=1)
        at = sample[..., None]
        x_drawn = np.take_along_axis(x, at, axis=1)
        d = x.shape[-1]
        # Speed: every agent's drawn experiences through f and g in one call.
        flat_x, flat_u = x_drawn.reshape(n * count, d), joint.reshape(n * count, n)
        next_x = self.dynamics.f(flat_x, flat_u).reshape(n, count, d)
        reward = _own(self.dynamics.g(flat_x, flat_u).reshape(n, count, n))
        return Part(
            self._inputs(x_drawn, np.take_along_axis(prev_u, at, axis=1)),
            _own(nearest_control(self.controls, joint)),
            reward,
            self._inputs(next_x, joint),
            joint,
            np.take_along_axis(drawn, pick, axis=1).astype(np.float64),
            np.where(kind == 0, np.nan, cfg.beta),
        )

    def _weights(self, parts: list[Part], delta: FloatArray) -> FloatArray:
        """Each sample's loss weight (N, S): eta / alpha under IQL, else 1; 0 where masked."""
        cfg, n = self.config, self.n_agents
        mask = np.concatenate([p.mask for p in parts], axis=1)
        if not cfg.iql:
            return mask
        joint = np.concatenate([p.joint for p in parts], axis=1)
        fixed = np.concatenate([p.rate for p in parts], axis=1)
        psi = _own(coordination(joint)) if cfg.psi else None
        eta = iql_rate(delta, _own(impact(joint)), cfg, n, psi)
        out: FloatArray = mask * np.where(np.isnan(fixed), eta, fixed) / cfg.alpha
        return out


def _identity(x: FloatArray) -> FloatArray:
    """The states themselves as features."""
    return x


def _own(values: NDArray[Any]) -> NDArray[Any]:
    """Agent i's column of its own rows: (N, S, N) -> (N, S)."""
    n = values.shape[0]
    return values[np.arange(n), :, np.arange(n)]
