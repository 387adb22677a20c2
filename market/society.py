"""A society: the bidders of a task's primitives, cloned or solitary, and their accounts.

Bidder ids are primitive-major: with clones, primitive i has bidders 2i and 2i + 1. Every
bidder has its own account (clones share a policy, never money). A policy answers for all
bidders at once, batched over states, so that many concurrent episodes cost one call.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from market.tasks import Task


class Policy(Protocol):
    """Draws every bidder's bid, in [0, 1] credit, for each of a batch of states."""

    def bids(self, states: NDArray[np.int64]) -> NDArray[np.float64]:
        """An array of shape (len(states), n_bidders)."""
        ...


@dataclass(frozen=True)
class Society:
    """Which primitive each bidder runs and which account it owns."""

    primitive_names: tuple[str, ...]
    cloned: bool

    @classmethod
    def of(cls, task: Task, cloned: bool = True) -> Society:
        """The society of `task`'s primitives."""
        return cls(primitive_names=task.primitive_names, cloned=cloned)

    @property
    def copies(self) -> int:
        """Bidders per primitive: 2 when cloned, else 1."""
        return 2 if self.cloned else 1

    @cached_property
    def primitive_of(self) -> tuple[int, ...]:
        """The primitive each bidder id runs (made once: a kernel reads it every auction)."""
        return tuple(i for i in range(len(self.primitive_names)) for _ in range(self.copies))

    @cached_property
    def accounts(self) -> tuple[str, ...]:
        """The account of each bidder id, e.g. `R.0` and its clone `R.1` (made once)."""
        return tuple(f"{n}.{c}" for n in self.primitive_names for c in range(self.copies))
