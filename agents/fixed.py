"""Bidders with fixed policies: truthful (bids Q*), random (uniform) and constant.

`truthful` bids Q*(s, phi) of the stationary discounted task. Where some |Q*| exceeds 1 credit
(Duality), every valuation is divided by max |Q*| so bids fit the range [0, 1], and negative
valuations bid 0; the ranking of primitives, hence the allocation, is unchanged.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from market.economy import Economy
from market.society import Society
from market.tasks import Task


class TableBidder:
    """Bids a fixed value per (state, bidder), the same in every episode; with `columns`,
    the table is per primitive and bidder i bids its column `columns[i]`, read at every
    call (an economy's slots change primitive at a birth)."""

    def __init__(self, table: NDArray[np.float64], columns: list[int] | None = None) -> None:
        self.table, self.columns = table, columns

    def bids(self, states: NDArray[np.int64]) -> NDArray[np.float64]:
        # Speed: `take`, not `table[states]`: a fancy index costs some 1.5 us more a call,
        # a tenth of the episode kernel's whole cost per auction
        rows = self.table.take(states, axis=0)
        return rows if self.columns is None else rows.take(self.columns, axis=1)


class ConstantBidder:
    """Every bidder bids the same fixed amount in every state."""

    def __init__(self, n_bidders: int, amount: float) -> None:
        self.n_bidders, self.amount = n_bidders, amount

    def bids(self, states: NDArray[np.int64]) -> NDArray[np.float64]:
        return np.full((len(states), self.n_bidders), self.amount)


class RandomBidder:
    """Bids uniformly at random on [0, 1], from its own generator."""

    def __init__(self, n_bidders: int, rng: np.random.Generator) -> None:
        self.n_bidders, self.rng = n_bidders, rng

    def bids(self, states: NDArray[np.int64]) -> NDArray[np.float64]:
        return self.rng.random((len(states), self.n_bidders))


def truthful_values(task: Task, gamma: float) -> NDArray[np.float64]:
    """Q*(s, a) scaled into the bid range as the module docstring says."""
    if not task.tabular:
        raise ValueError(
            f"truthful bidders bid Q*, which task {task.name!r} has no table of; "
            "use --bidder random or constant, or --learn"
        )
    q = task.q_star(gamma)
    scale = max(1.0, float(np.abs(q).max()))
    return np.clip(q / scale, 0.0, 1.0)


BIDDERS = ("truthful", "random", "constant")


def make_bidder(
    name: str,
    task: Task,
    society: Society,
    gamma: float,
    rng: np.random.Generator,
    constant: float = 0.5,
    economy: Economy | None = None,
) -> TableBidder | RandomBidder | ConstantBidder:
    """The fixed bidder called `name` for every bidder of `society`, or for every slot of
    `economy` (a child bids as its parent's primitive does)."""
    prims = list(society.primitive_of) if economy is None else economy.primitive
    if name == "truthful":
        values = truthful_values(task, gamma)
        return TableBidder(values[:, prims]) if economy is None else TableBidder(values, prims)
    if name == "random":
        return RandomBidder(len(prims), rng)
    if name == "constant":
        return ConstantBidder(len(prims), constant)
    check_bidder(name)
    raise AssertionError(f"{name} is in BIDDERS but made by no branch above")


def check_bidder(name: str) -> None:
    """A one-line ValueError unless `name` is a fixed bidder."""
    if name not in BIDDERS:
        raise ValueError(f"unknown bidder {name!r}; choose one of: {', '.join(BIDDERS)}")
