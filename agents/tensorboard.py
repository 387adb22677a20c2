"""`--tensorboard DIR`: a run's learning metrics and episode returns as TensorBoard scalars.

Each run writes one TensorBoard run, `DIR/<run directory's name>` (whose default name ends in
`-s<seed>`, so a directory of seeds compares them side by side):
  episode/return   each finished episode's undiscounted return (credit), against env steps
  update/<metric>  each learner update's metrics (the columns of metrics.parquet for the PPO
                   primitives; the DQN agents' losses for the control variant), against the
                   update's number
The scalars are a view for TensorBoard only: the ledger stays the record, and nothing about
them enters it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agents.learner import Learner
from ledger.units import to_credit
from market.core import EpisodeResult


class Scalars:
    """A TensorBoard writer for one run (`torch.utils.tensorboard.SummaryWriter`)."""

    def __init__(self, root: Path, run: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.path = root / run.name
        self.writer = SummaryWriter(str(self.path))
        self.steps = 0
        self.updates = 0

    def episode(self, result: EpisodeResult) -> None:
        """A finished episode's return, at the env steps taken by its end."""
        self.steps += result.steps
        self.writer.add_scalar("episode/return", to_credit(result.episode_return), self.steps)

    def update(self, metrics: dict[str, float]) -> None:
        """One learner update's metrics, at its number (1, 2, ...)."""
        self.updates += 1
        for name, value in metrics.items():
            self.writer.add_scalar(f"update/{name}", float(value), self.updates)

    def attach(self, learner: Learner) -> None:
        """Write every update of `learner` (its `on_update` hook), after any hook it had."""
        before: Callable[[dict[str, float]], None] | None = getattr(learner, "on_update", None)

        def on_update(metrics: dict[str, float]) -> None:
            if before is not None:
                before(metrics)
            self.update(metrics)

        learner.on_update = on_update

    def watching(
        self, on_episode: Callable[[EpisodeResult], None] | None
    ) -> Callable[[EpisodeResult], None]:
        """`on_episode`, which also writes each episode's return."""

        def both(result: EpisodeResult) -> None:
            self.episode(result)
            if on_episode is not None:
                on_episode(result)

        return both

    def close(self) -> None:
        self.writer.close()
