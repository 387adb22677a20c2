"""`market report`: tables, PNG plots with their series, and one self-contained HTML page."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from analyses.auctions import bids, bids_against
from analyses.control import agent_returns, agent_returns_curve
from analyses.inequality import lorenz
from analyses.wealth import returns, returns_curve, wealth, wealth_over_time
from cli import app
from market import rundir
from market.tasks import make_task


def simulate(tmp_path: Path, *args: str) -> Path:
    """A finished run made through the CLI, in tmp_path/run."""
    run = tmp_path / "run"
    made = CliRunner().invoke(app, ["simulate", *args, "--out", str(run)])
    assert made.exit_code == 0, made.output
    return run


def test_an_auction_runs_report_holds_its_tables_plots_and_series(tmp_path: Path) -> None:
    """Every plot is a PNG with the exact series beside it; the page embeds all of them."""
    run = simulate(tmp_path, "--task", "chain", "--bidder", "random", "--episodes", "40")
    result = CliRunner().invoke(app, ["report", str(run), "--points", "50"])
    assert result.exit_code == 0, result.output
    out = run / "report"
    events = rundir.open_run_ledger(run).scan()
    for name in ("wealth", "lorenz", "gini", "returns", "bids"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pl.read_parquet(out / "wealth.parquet").equals(wealth_over_time(events, 50))
    assert pl.read_parquet(out / "lorenz.parquet").equals(lorenz(events))
    curve = pl.read_parquet(out / "returns.parquet")
    assert curve.equals(returns_curve(events, 50))
    assert curve.height == 40 and curve["credit"].to_list() == returns(events)["credit"].to_list()
    q = make_task("chain").q_star(0.99)
    since = returns(events)["episode"][36]  # the last 10% of 40 episodes
    expected = bids_against(bids(events, since), q)
    assert pl.read_parquet(out / "bids.parquet").equals(expected)
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5
    for account, credit in wealth(events).select("account", "credit").iter_rows():
        assert f"<td>{account}</td><td>{credit:.6g}</td>" in page
    assert "wealth (final)" in result.output and "bids against Q*" in result.output


def test_a_control_runs_report_shows_each_agents_returns(tmp_path: Path) -> None:
    """A control run's report has every agent's learning curve and late mean return."""
    run = simulate(tmp_path, "--variant", "control", "--task", "integrator", "--agents", "3",
                   "--bidder", "random", "--episodes", "10")  # fmt: skip
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    events = rundir.open_run_ledger(run).scan()
    curves = pl.read_parquet(run / "report" / "returns.parquet")
    assert curves.equals(agent_returns_curve(events, 200))
    per_episode = agent_returns(events).sort("episode", "agent")
    assert curves.select("episode", "agent", "credit").equals(
        per_episode.select("episode", "agent", "credit")
    )  # 10 episodes in up to 200 blocks: a block per episode
    assert set(curves["agent"]) == {"agent0", "agent1", "agent2"}
    assert "return per agent" in result.output


@pytest.mark.parametrize("target", ["missing", "empty"])
def test_report_of_something_that_is_not_a_run_is_a_one_line_error(
    tmp_path: Path, target: str
) -> None:
    """No run there: one line on stderr, a non-zero exit, nothing written."""
    path = tmp_path / target
    if target == "empty":
        path.mkdir()
    result = CliRunner().invoke(app, ["report", str(path)])
    assert result.exit_code != 0
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (path / "report").exists()
