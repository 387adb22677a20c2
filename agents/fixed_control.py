"""Fixed control policies for the control variant: every control 0, or uniformly random."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


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
