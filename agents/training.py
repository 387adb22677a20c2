"""A learning run in a run directory: its ledger, metrics per update, snapshots, resume.

Files beside `config.json`, `ledger/` and `summary.json`:
  metrics.parquet              one row per PPO update: auctions so far, losses, entropy,
                               mean utility, and each primitive's mean recent bid
  snapshots/update-NNNNNN.pt   the society's parameters, optimisers, random states and
                               unfinished batches, every `snapshot_every` updates and at the end

`--resume RUN` reloads the latest snapshot and appends to the same ledger: its sequence,
episode numbers, SimPy time and balances continue, and the audit covers the join.
"""

from __future__ import annotations

import time
from pathlib import Path

import polars as pl
import torch

from agents.learning import LearningSociety
from agents.ppo_monolithic import MonolithicPPO
from market.society import Society

METRICS = "metrics.parquet"
SNAPSHOTS = "snapshots"


class TrainingRecord:
    """Writes a learning society's metrics and snapshots into its run directory."""

    def __init__(
        self,
        run: Path,
        learner: LearningSociety | MonolithicPPO,
        society: Society,
        snapshot_every: int = 50,
    ) -> None:
        self.run, self.learner, self.snapshot_every = run, learner, snapshot_every
        self.names = society.primitive_names
        self.start = time.perf_counter()
        self.rows: list[dict[str, float]] = (
            pl.read_parquet(run / METRICS).to_dicts() if (run / METRICS).exists() else []
        )
        learner.on_update = self._on_update

    def _on_update(self, metrics: dict[str, float]) -> None:
        bids = {f"bid_{n}": b for n, b in zip(self.names, self.learner.mean_bids(), strict=True)}
        row = {
            "update": float(len(self.learner.updates)),
            **metrics,
            **bids,
            "seconds": time.perf_counter() - self.start,
        }
        self.rows.append(row)
        if len(self.learner.updates) % self.snapshot_every == 0:
            self.save()

    def save(self) -> Path:
        """Write the metrics table and a snapshot of the society now."""
        if self.rows:
            pl.DataFrame(self.rows).write_parquet(self.run / METRICS)
        folder = self.run / SNAPSHOTS
        folder.mkdir(exist_ok=True)
        path = folder / f"update-{len(self.learner.updates):06d}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save(self.learner.state_dict(), tmp)
        tmp.replace(path)
        return path


def latest_snapshot(run: Path) -> Path | None:
    """The newest snapshot of a run directory, if any."""
    found = sorted((run / SNAPSHOTS).glob("update-*.pt"))
    return found[-1] if found else None


def load_snapshot(learner: LearningSociety, path: Path) -> None:
    """Restore `learner` from a snapshot file."""
    learner.load_state_dict(torch.load(path, weights_only=False))


def start_from(learner: LearningSociety | MonolithicPPO, path: Path) -> None:
    """Start `learner` from the nets of snapshot `path` (a transfer); a one-line ValueError
    when the snapshot holds another kind or shape of learner."""
    state = torch.load(path, weights_only=False)
    try:
        learner.load_parameters(state)
    except (KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0]
        raise ValueError(f"--init {path}: not a snapshot of this learner ({first})") from None
