"""What a run needs of its learner, whichever it is (the PPO society, the monolithic baseline,
the control agents): it hears its own events from the bus, and reports each update."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from market.bus import Bus


class Learner(Protocol):
    """A run's learner: attached to the run's bus before it starts; `on_update`, if set, is
    called with each update's metrics (the training record, a TensorBoard writer)."""

    on_update: Callable[[dict[str, float]], None] | None

    def attach(self, bus: Bus) -> None:
        """Subscribe to the bus: the learner hears only the ledger's events."""
        ...
