"""Fixed control policies for the control variant: every control 0, uniformly random, and a
designed central controller of the stiction cart."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from market.control_tasks import Stiction


class ZeroPolicy:
    """Every agent applies the control 0 (the index of 0.0 in the control set)."""

    def __init__(self, controls: NDArray[np.float64], n_agents: int) -> None:
        self.zero = int(np.flatnonzero(controls == 0.0)[0])
        self.n_agents = n_agents

    def act(self, x: NDArray[np.float64], previous: NDArray[np.float64]) -> NDArray[np.int64]:
        return np.full((len(x), self.n_agents), self.zero, dtype=np.int64)


class RandomPolicy:
    """Every agent picks a control uniformly at random, from the policy's own generator."""

    def __init__(self, n_controls: int, n_agents: int, rng: np.random.Generator) -> None:
        self.n_controls, self.n_agents, self.rng = n_controls, n_agents, rng

    def act(self, x: NDArray[np.float64], previous: NDArray[np.float64]) -> NDArray[np.int64]:
        return self.rng.integers(0, self.n_controls, size=(len(x), self.n_agents))


class PushAndCoast:
    """A central controller of the cart held by static friction (`Stiction`): all agents
    push at full force toward p* while the cart, pushed this step and then left to friction,
    would stop short of p* + `margin`; then all idle. It reads the state only."""

    def __init__(self, task: Stiction, margin: float = 0.02) -> None:
        self.task, self.margin = task, margin
        self.full = int(np.argmax(task.controls))
        self.zero = int(np.flatnonzero(task.controls == 0.0)[0])

    def stops_at(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        """Where the cart at each state of x (B, 2) comes to rest with every control 0."""
        idle = np.zeros((len(x), self.task.n_agents))
        for _ in range(self.task.horizon):
            x = self.task.f(x, idle)
        return x[:, 0]

    def act(self, x: NDArray[np.float64], previous: NDArray[np.float64]) -> NDArray[np.int64]:
        full = np.full((len(x), self.task.n_agents), self.task.controls[self.full])
        pushed = self.task.f(x, full)
        push = self.stops_at(pushed) <= self.task.target + self.margin
        chosen = np.where(push, self.full, self.zero)
        return np.repeat(chosen[:, None], self.task.n_agents, axis=1)
