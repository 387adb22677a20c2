"""A Gymnasium env with a `Box` action space as the shared plant of the control variant
(`--variant control --task gym:Pendulum-v1 --agents N`).

- **Who drives what.** When the action has N dimensions, agent i drives dimension i, from a
  control set spread over that dimension's bounds (the same bounds on every dimension).
  When it has one, each agent drives a 1/N share of its range and the plant receives the
  sum: N agents at full push give the env's full action.
- **The plant's state** is the env's own (`env.unwrapped.state`, which classic-control envs
  keep and accept). `f(x, u)` sets it, steps the env with the agents' action and reads it
  back, so the dynamics IER imagines with are the env's, copied from the saved state, and
  the audit re-derives every step to the bit. An env without a settable `state` is refused
  in one line.
- **Rewards.** Each agent earns an equal share, r / N, of the env's reward r for the step,
  so the agents' returns sum to the env's return (comparable with a single agent's).
- **Episodes** start from `reset(seed=s)`, s drawn from the run's generator of starts, and
  last the env's time limit (the kernel's horizon; the env itself is stepped unwrapped):
  an env that terminates is refused at that step, in one line.
- **What a learner reads** is the env's observation of the state (`_get_obs`, where the env
  has it: Pendulum's (cos, sin, omega)), else the state. There is no goal band: `in_goal`
  is never true.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from market.control_tasks import Array, ControlTask, _frozen
from market.gym_tasks import GymTaskError, make_env, time_limit
from market.tasks import GYM

N_CONTROLS = 5
"""Each agent's controls by default (`--controls`): evenly over its share of the action's
range, 0 among them."""


class GymControl(ControlTask):
    """A Gymnasium env with a Box action space, driven jointly by N agents."""

    def __init__(self, env: str, n_agents: int = 2, n_controls: int = N_CONTROLS) -> None:
        from gymnasium import spaces

        super().__init__(n_agents)
        self.env_id, self.name = env, GYM + env
        self._env = made = make_env(env)
        actions = made.action_space
        if not isinstance(actions, spaces.Box) or len(actions.shape) != 1:
            raise GymTaskError(
                f"{self.name} has a {type(actions).__name__} action space; the control "
                "variant needs a Box of one dimension or of one per agent (--variant auction "
                "for Discrete actions)"
            )
        dims = int(actions.shape[0])
        low, high = np.asarray(actions.low, np.float64), np.asarray(actions.high, np.float64)
        if dims not in (1, n_agents) or np.ptp(low) or np.ptp(high):
            raise GymTaskError(
                f"{self.name}'s action has {dims} dimensions (bounds {low}..{high}); the "
                f"control variant needs 1, or one per agent ({n_agents}) with equal bounds"
            )
        self.shared = dims == 1
        """Whether every agent drives a share of one dimension (else one dimension each)."""
        share = n_agents if self.shared else 1
        self.controls = _frozen(np.linspace(low[0] / share, high[0] / share, n_controls))
        self.horizon = time_limit(made)
        made.reset(seed=0)
        self._plant = made.unwrapped
        if not hasattr(self._plant, "state"):
            raise GymTaskError(
                f"{self.name} keeps no settable state (env.unwrapped.state): its dynamics "
                "cannot be re-stepped from a saved state; the control variant needs one"
            )
        self.state_dim = len(np.asarray(self._plant.state, dtype=np.float64))
        self._last: tuple[Array, Array, Array, Array] | None = None

    def reset(self, rng: np.random.Generator, batch: int) -> Array:
        out = np.empty((batch, self.state_dim))
        for i in range(batch):
            self._env.reset(seed=int(rng.integers(0, 2**63 - 1)))
            out[i] = np.asarray(self._plant.state, dtype=np.float64)
        return out

    def _step(self, x: Array, u: Array) -> tuple[Array, Array]:
        """Next states and the env's rewards for states x (B, state_dim) under controls u."""
        last = self._last
        if last is not None and np.array_equal(last[0], x) and np.array_equal(last[1], u):
            return last[2], last[3]  # g after f on the same step
        nxt, reward = np.empty_like(x), np.empty(len(x))
        action = u.sum(axis=1, keepdims=True) if self.shared else u
        for i in range(len(x)):
            self._plant.state = x[i].copy()
            _, reward[i], terminated, _, _ = self._plant.step(action[i])
            if terminated:
                raise GymTaskError(
                    f"{self.name} terminated an episode: the control variant runs episodes "
                    "of the time limit's length; use --variant auction"
                )
            nxt[i] = np.asarray(self._plant.state, dtype=np.float64)
        self._last = (x, u, nxt, reward)
        return nxt, reward

    def f(self, x: Array, u: Array) -> Array:
        return self._step(x, u)[0]

    def g(self, x: Array, u: Array) -> Array:
        reward = self._step(x, u)[1]
        return np.repeat(reward[:, None] / self.n_agents, self.n_agents, axis=1)

    def features(self, x: Array) -> Array:
        observe = getattr(self._plant, "_get_obs", None)
        if observe is None:
            return x
        rows = []
        for state in x:
            self._plant.state = state.copy()
            rows.append(np.asarray(observe(), dtype=np.float64))
        return np.stack(rows) if rows else np.empty((0, self.state_dim))

    def in_goal(self, x: Array) -> Any:
        return np.zeros(len(x), dtype=bool)
