"""`market report`: tables, PNG plots with their series, and one self-contained HTML page."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from analyses.auctions import bids, bids_against
from analyses.control import agent_returns, agent_returns_curve
from analyses.inequality import ALL_OPENED, LIVING, lorenz
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
    curves = pl.read_parquet(out / "lorenz.parquet")
    assert curves.filter(pl.col("members") == ALL_OPENED).drop("members").equals(lorenz(events))
    assert (
        curves.filter(pl.col("members") == LIVING)
        .drop("members")
        .equals(lorenz(events, living=True))
    )
    curve = pl.read_parquet(out / "returns.parquet")
    assert curve.equals(returns_curve(events, 50))
    assert curve.height == 40 and curve["credit"].to_list() == returns(events)["credit"].to_list()
    q = make_task("chain").q_star(0.99)
    since = returns(events)["episode"][36]  # the last 10% of 40 episodes
    expected = bids_against(bids(events, since), q)
    shown = pl.read_parquet(out / "bids.parquet")
    assert shown.drop("name").equals(expected)
    assert shown.columns.index("name") == shown.columns.index("primitive") + 1
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


def test_plots_name_primitives_as_the_tables_do(tmp_path: Path) -> None:
    """bids.png's ticks name each primitive as the tables do (`R`, as in accounts `R.0`,
    `R.1`), and the winners and bids tables carry the same name beside the number."""
    from analyses.report import bid_labels, run_report

    run = simulate(tmp_path, "--task", "chain", "--bidder", "random", "--episodes", "20")
    report = run_report(run, 20)
    accounts = set(report.tables["wealth (final)"]["account"])
    for title in ("winners (last 10% of episodes)", "bids against Q* (last 10% of episodes)"):
        table = report.tables[title]
        names = dict(table.select("primitive", "name").unique().iter_rows())
        assert names == {0: "L", 1: "R"}
        assert {f"{n}.0" for n in names.values()} <= accounts
    table = report.tables["bids against Q* (last 10% of episodes)"]
    labels = bid_labels(table)
    assert labels == [f"s{s}/{'LR'[p]}" for s, p in table.select("state", "primitive").iter_rows()]
    assert not any("/p" in label for label in labels)


def test_the_learning_curve_draws_the_block_means_alone() -> None:
    """returns.png draws the mean of each block of episodes, not the min-to-max band that
    fills the plot when returns are 0 or the goal's reward."""
    from analyses.report import returns_figure

    curve = pl.DataFrame(
        {"episode": [0, 100, 200], "episodes": [100, 100, 50], "credit": [0.1, 0.4, 0.7],
         "min_credit": [0.0, 0.0, 0.0], "max_credit": [0.8, 0.8, 0.8]},
        schema_overrides={"episodes": pl.UInt32},
    )  # fmt: skip
    ax = returns_figure(curve).axes[0]
    assert not ax.collections  # no fill_between band
    (line,) = ax.lines
    assert list(line.get_ydata()) == [0.1, 0.4, 0.7]
    assert ax.get_legend().get_texts()[0].get_text() == "mean return per block of 100 episodes"


def test_the_wealth_plot_names_the_markets_accounts_and_the_richest_members() -> None:
    """With many members, wealth.png names the environment, treasury and auctioneer, and
    the LABELLED richest members at the end; the others are one grey legend entry."""
    from analyses.report import LABELLED, wealth_figure

    members = [f"m{i}.0" for i in range(20)]
    rows = [
        (account, seq, float(seq), seq * 10, final * seq / 2)
        for i, account in enumerate(members)
        for final in [float(i)]
        for seq in (1, 2)
    ] + [(a, seq, float(seq), seq * 10, v) for a, v in (("environment", -190.0),
         ("treasury", 5.0), ("auctioneer", 0.0)) for seq in (1, 2)]  # fmt: skip
    table = pl.DataFrame(rows, schema=["account", "seq", "time", "env_steps", "credit"],
                         orient="row")  # fmt: skip
    figure = wealth_figure(table, ("env_steps", "env steps (auctions)"))
    top, bottom = figure.axes
    named = [t.get_text().split(" ")[0] for t in top.get_legend().get_texts()]
    richest = [f"m{i}.0" for i in range(19, 19 - LABELLED, -1)]
    assert named == [*richest, f"{20 - LABELLED}"]
    assert top.get_legend().get_texts()[-1].get_text() == f"{20 - LABELLED} other members"
    market = {t.get_text() for t in bottom.get_legend().get_texts()}
    assert market == {"environment", "treasury", "auctioneer"}
    assert bottom.get_xlabel() == "env steps (auctions)"


def test_an_auction_runs_wealth_is_plotted_against_its_auctions(tmp_path: Path) -> None:
    """wealth.png's x axis is env steps: each checkpoint's count of auctions so far, ending
    at the run's auctions."""
    run = simulate(tmp_path, "--task", "chain", "--bidder", "random", "--episodes", "10")
    events = rundir.open_run_ledger(run).scan()
    table = wealth_over_time(events, 7)
    auctions = events.filter(pl.col("kind") == "allocate").select("seq").collect()["seq"]
    for seq, steps in table.select("seq", "env_steps").unique().iter_rows():
        assert steps == (auctions <= seq).sum()
    assert table["env_steps"].max() == auctions.len()
