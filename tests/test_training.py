"""Learning runs on disk: metrics per update, snapshots, and --resume across one ledger."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from agents.learning import LearningSociety
from agents.ppo_bidder import PPOBidders
from agents.settings import PPOConfig
from agents.training import latest_snapshot, load_snapshot
from cli import app
from market.society import Society
from market.tasks import make_task
from simulation.rundir import open_run_ledger


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def market(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_a_learning_run_writes_metrics_and_snapshots_and_resumes(cwd: Path) -> None:
    """Resume continues the ledger (audit clean across the join), the metrics and the updates."""
    code, _ = market("simulate", "--task", "chain", "--learn", "--steps", "5000", "--out", "r")
    assert code == 0
    first = pl.read_parquet(cwd / "r" / "metrics.parquet")
    snapshot = latest_snapshot(cwd / "r")
    assert first.height >= 2 and snapshot is not None
    code, out = market("simulate", "--resume", "r", "--steps", "5000")
    assert code == 0 and "AUDIT CLEAN" in out
    after = pl.read_parquet(cwd / "r" / "metrics.parquet")
    assert after.height > first.height
    assert after["update"].to_list() == list(range(1, after.height + 1))
    assert after["auctions"].is_sorted()
    code, out = market("audit", "r")
    assert code == 0 and "AUDIT CLEAN" in out


def test_a_snapshot_restores_the_society_exactly(cwd: Path) -> None:
    """Loading a snapshot gives back the same parameters, optimiser and random states."""
    market("simulate", "--task", "chain", "--learn", "--steps", "5000", "--out", "r")
    task = make_task("chain")
    restored = LearningSociety(task, Society.of(task), PPOConfig(), seed=99)
    restored.bids(np.arange(6))  # the untrained society's bid table is now cached
    snapshot = latest_snapshot(cwd / "r")
    assert snapshot is not None
    load_snapshot(restored, snapshot)
    saved = torch.load(snapshot, weights_only=False)
    for name, tensor in restored.agent.bank.state_dict().items():
        assert torch.equal(tensor, saved["bank"][name])
    assert restored.agent.rng.bit_generator.state == saved["rng"]
    assert restored.updates == saved["updates"]
    assert isinstance(restored.agent, PPOBidders)
    alpha, _ = restored.agent._bid_table()  # bids come from the restored parameters
    dist = restored.agent.bank.distribution(torch.arange(6))
    expected = dist.concentration1[restored.agent.primitive_of].detach().double().numpy()
    assert np.array_equal(alpha, expected)


def test_a_fixed_bidder_run_resumes_and_a_missing_one_is_a_one_line_error(cwd: Path) -> None:
    """A fixed-bidder run continues with --episodes more, drawing new bids (not the start's
    again) and auditing clean; resuming a missing run is a one-line error."""
    market("simulate", "--bidder", "random", "--episodes", "5", "--out", "fixed")
    code, out = market("simulate", "--resume", "fixed", "--episodes", "5")
    assert code == 0 and "AUDIT CLEAN" in out, out
    events = open_run_ledger(cwd / "fixed").scan().collect()
    starts = events.filter(kind="run_start")["seq"].to_list()
    assert len(starts) == 2 and events.filter(kind="episode_start").height == 10
    bids = events.filter(kind="bid")
    first, second = bids.filter(pl.col("seq") < starts[1]), bids.filter(pl.col("seq") > starts[1])
    assert first["amount"].head(8).to_list() != second["amount"].head(8).to_list()
    code, out = market("simulate", "--resume", "nowhere")
    assert code == 2 and "no such run" in out
