"""The control learners' replay: the stacked experience buffer and TER's two-step sampling.

`agents/dqn_control.py` stores every agent's experience here and draws its minibatches with
these functions (methods.md Part 2, "TER"; [ours] marks the forms the paper left open).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


def macro_batch_size(t: int, b: int, eps: float) -> int:
    """TER's B_k = t + (B - t)(1 - eps_k) [ours], rounded: t while exploring, B at eps_k = 0."""
    return t + round((b - t) * (1.0 - eps))


@functools.cache
def rank_probabilities(n: int, rho: float) -> FloatArray:
    """TER's P(j) ∝ tau_j^rho over a macro-batch of n sorted oldest first [ours].

    tau_j = (j + 1) / n is the fraction of the macro-batch collected no later than j: 1 for
    the newest, 1/n for the oldest. Every experience has its own step index (the learner's
    env-step count), so no two share a rank.
    """
    weight = (np.arange(1, n + 1) / n) ** rho
    out: FloatArray = weight / weight.sum()
    out.setflags(write=False)
    return out


def distinct_uniform(rng: np.random.Generator, size: int, shape: tuple[int, int]) -> IntArray:
    """Per row of `shape` (R, b), b distinct integers of [0, size) uniformly, sorted.

    Speed: every row at once, and no sort of random data. b uniform integers are drawn
    already sorted (normalised sums of exponential gaps are sorted uniforms, and flooring
    keeps the order); a repeated value is drawn again until none repeats, and the nearly
    sorted row is sorted again by a merge sort, which takes linear time on it. The
    procedure treats every value alike, so each row is a uniform b-subset.
    """
    rows, b = shape
    ends = np.cumsum(rng.standard_exponential((rows, b + 1)), axis=1)
    out: IntArray = (ends[:, :-1] / ends[:, -1:] * size).astype(np.int64)
    while True:
        again = np.zeros(shape, dtype=bool)
        again[:, 1:] = out[:, 1:] == out[:, :-1]
        if not again.any():
            return out
        out[again] = rng.integers(0, size, int(again.sum()))
        out.sort(axis=1, kind="stable")


def draw_without_replacement(p: FloatArray, t: int, rng: np.random.Generator) -> IntArray:
    """t positions per row of p (R, n), drawn one after another ∝ p without replacement.

    Speed: an exponential race (Efraimidis and Spirakis): the t smallest E_j / p_j, with E_j
    standard exponential, are such a draw, for all rows at once.
    """
    with np.errstate(divide="ignore"):
        keys = rng.standard_exponential(size=p.shape) / p
    return np.argpartition(keys, t - 1, axis=-1)[..., :t]


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
        # Speed: the float fields side by side in one array, so that a sample's row is one
        # gather; x, prev_u, reward and next_x are views of it.
        d, n = state_dim, n_agents
        self.rows = np.zeros((capacity, 2 * d + 2 * n))
        self.x, self.prev_u = self.rows[:, :d], self.rows[:, d : d + n]
        self.reward, self.next_x = self.rows[:, d + n : d + 2 * n], self.rows[:, d + 2 * n :]
        self.action = np.zeros((capacity, n_agents), dtype=np.int64)
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
        """Store one step of B parallel systems (rows of each array), stamped k, k + 1, ...:
        one step index per experience, in the order observed."""
        rows = (self._head + np.arange(len(x))) % self.capacity
        self.x[rows], self.prev_u[rows], self.action[rows] = x, prev_u, action
        self.reward[rows], self.next_x[rows] = reward, next_x
        self.k[rows] = k + np.arange(len(x))
        self._head = int(rows[-1] + 1) % self.capacity
        self.size = min(self.size + len(x), self.capacity)

    def rows_by_age(self, ages: IntArray) -> IntArray:
        """The rows holding the experiences observed `ages` experiences before the newest."""
        out: IntArray = (self._head - 1 - ages) % self.capacity
        return out

    def view(self, rows: IntArray, controls: FloatArray) -> Batch:
        """Each agent's experiences at its own buffer rows (N, S)."""
        d, n = self.x.shape[1], self.prev_u.shape[1]
        action, data = self.action[rows], self.rows[rows]
        return Batch(
            data[..., :d],
            data[..., d : d + n],
            controls[action],
            own_columns(action),
            own_columns(data[..., d + n : d + 2 * n]),
            data[..., d + 2 * n :],
        )


def own_columns(values: NDArray[Any]) -> NDArray[Any]:
    """Agent i's column of its own rows: (N, S, N) -> (N, S)."""
    n = values.shape[0]
    return values[np.arange(n), :, np.arange(n)]
